"""The whole suite runs with mmjax's runtime shape checks on (``mmjax.types.shape_checked``).

Set before anything imports mmjax: the switch is read once, at import. Subprocess
workers (tests/sharding) inherit it from the environment.
"""

import os

os.environ.setdefault("MMJAX_SHAPE_CHECKS", "1")
