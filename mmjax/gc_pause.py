"""``gc_paused()``: Python's cyclic garbage collector off for a block of start-up work, as it was after it.

Importing mmjax's dependencies (jax, flax, transformers, and torch where it is installed) and loading a
checkpoint (transformers' config and processor modules, the traced abstract model) allocate about half a
million long-lived objects. While they accumulate, the collector runs a full collection each time the
heap has grown by a quarter, and each walks all of them again. Measured with ``gc.callbacks`` in
``benchmarks/startup.py``'s first answer on the 2-core host: 1.3-1.6 s of collections, of them full ones
0.36-0.47 s during the import, 0.37-0.48 s during ``mmjax.load`` and 0.25 s in the first generate. With the
collector paused during the import and the load (``mmjax/__init__.py``, ``mmjax.load``), 0.55-0.6 s: the
young collections right after each pause, which look at the new objects once.

Only reference cycles wait: everything else is freed as it is dropped, collector or not. A collector
that was off (``gc.disable()`` by the user) stays off.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """``with gc_paused(): ...`` (or ``@gc_paused()``): no cyclic garbage collection inside, then as before."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
