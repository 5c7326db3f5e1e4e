"""Zeroed arrays whose memory is touched only where it is used (C++ in the .cc beside this file).

``jnp.zeros`` writes every byte: a new engine's 1 GiB KV cache took 0.5-0.7 s to zero on the 2-core
benchmark host (``benchmarks/startup.py``: most of ``engine_s``) and became resident at once. The
kernel leaves the zeros to the operating system, so a page of the cache costs its fault when a step
first reaches it, and a process holds the memory its requests use.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp

from mmjax.kernels_cpu.registration import register, register_in_background, runs_here

SOURCE = Path(__file__).with_name("zeroed_pages.cc")
TARGET, SYMBOL = "mmjax_zeroed_pages", "MmjaxZeroedPages"


def build_in_background() -> threading.Thread | None:
    """Starts building the kernel on a thread (``mmjax.load`` does, before reading the weights)."""
    return register_in_background(TARGET, SOURCE, SYMBOL)


def zeroed_unavailable() -> str | None:
    """None if ``zeroed_arrays`` runs on the kernel here (building it now if needed), else why not."""
    reason = runs_here()
    return reason if reason is not None else register(TARGET, SOURCE, SYMBOL)


def zeroed_arrays(shape: tuple[int, ...], dtype: jnp.dtype, count: int,
                  device: jax.sharding.Sharding | None = None) -> tuple[jax.Array, ...]:
    """``count`` arrays of zeros of ``shape`` and ``dtype``, their memory left to be filled on first
    touch; on ``device``, a sharding onto one CPU device (default: the default device). Call only where
    ``zeroed_unavailable()`` is None."""
    return _program(tuple(shape), jnp.dtype(dtype), count, device)()


@functools.lru_cache(maxsize=8)
def _program(shape: tuple[int, ...], dtype: jnp.dtype, count: int,
             device: jax.sharding.Sharding | None) -> jax.stages.Wrapped:
    result = jax.ShapeDtypeStruct(shape, dtype)

    def zeros() -> Sequence[jax.Array]:  # side effects: XLA must not fold the calls into one buffer
        return tuple(jax.ffi.ffi_call(TARGET, result, has_side_effect=True)() for _ in range(count))

    return jax.jit(zeros, out_shardings=device)
