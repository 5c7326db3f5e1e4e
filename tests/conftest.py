"""The whole suite runs with mmjax's runtime shape checks on (``mmjax.types.shape_checked``).

Set before anything imports mmjax: the switch is read once, at import. Subprocess
workers (tests/sharding) inherit it from the environment.

The persistent compilation cache and the built CPU kernels go to directories
of this run (the tests never write into the user's caches); programs compiled
again by later tests, in this process or in the sharding workers, load from there.
"""

import os
import tempfile

os.environ.setdefault("MMJAX_SHAPE_CHECKS", "1")
os.environ.setdefault("MMJAX_COMPILATION_CACHE", tempfile.mkdtemp(prefix="mmjax-test-xla-cache-"))
os.environ.setdefault("MMJAX_KERNEL_CACHE", tempfile.mkdtemp(prefix="mmjax-test-kernels-"))
