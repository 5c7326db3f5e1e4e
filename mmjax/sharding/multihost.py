"""What a multi-host run (one process per host, ``jax.distributed.initialize()``) needs of the host code.

Every process runs the same engine over the same requests, so its host
bookkeeping (queue, pages, detokenization) must see the same values
everywhere. Two things would break that:

- reading a result back: an array split over several hosts is not fully
  addressable by any one of them, so ``fetch`` gathers it to every process;
- values that differ by host: a seed drawn on each process, or the free memory
  each host reports. A value every process passes as a "replicated" input
  must be identical (JAX does not check), and every host must size the cache
  alike, so ``agreed_seed`` takes process 0's draw everywhere and
  ``agreed_min`` the least of all hosts' values.

On one host all three are plain: ``fetch`` is ``jax.device_get``, the others
return their argument.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np


def fetch(tree: Any) -> Any:
    """``jax.device_get`` that also works for arrays spread over several processes' devices."""
    return jax.tree.map(_fetch_one, tree)


def _fetch_one(x: Any) -> Any:
    if not isinstance(x, jax.Array) or x.is_fully_addressable or x.is_fully_replicated:
        return jax.device_get(x)
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(x, tiled=True)


def agreed_seed(seed: int) -> int:
    """Process 0's ``seed`` (in ``[0, 2**31)``) on every process (a collective when there are several)."""
    if not 0 <= seed < 2**31:
        raise ValueError(f"seed must be in [0, 2**31) (JAX moves 32-bit ints), got {seed}")
    if jax.process_count() == 1:
        return seed
    from jax.experimental import multihost_utils

    return int(multihost_utils.broadcast_one_to_all(np.asarray(seed, np.int32)))


def agreed_min(value: int) -> int:
    """The least of every process's ``value`` (a collective when there are several processes)."""
    if jax.process_count() == 1:
        return value
    from jax.experimental import multihost_utils

    return int(np.min(multihost_utils.process_allgather(np.asarray(value, np.int32))))
