"""Where mmjax keeps what it builds once per machine: ``$XDG_CACHE_HOME/mmjax/<name>`` (or ``~/.cache/mmjax/<name>``).

The persistent XLA compilation cache (``mmjax.engine.compilation``) and the
built CPU kernels (``mmjax.kernels_cpu.build``) live there; each has its own
environment variable to move it.
"""

from __future__ import annotations

import os
from pathlib import Path


def user_cache_dir(name: str) -> Path:
    """``$XDG_CACHE_HOME/mmjax/<name>``, or ``~/.cache/mmjax/<name>`` when that is unset."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "mmjax" / name
