"""Writing a step's K/V rows into a 16-bit paged cache on CPU, in place (C++ in the .cc beside this file).

XLA's CPU backend has no bfloat16/float16 scatter or dynamic-update-slice: it converts every page of the
cache to float32 and back around one, each step and layer. Measured on the LLaVA benchmark model
(``benchmarks/generate_vs_transformers.py``'s, bfloat16, 2 sequences): a decode step took 490-540 ms
against 16.7 ms in float32, those conversions most of it (``jax.profiler``: ``wrapped_convert`` of every
``kv_pages`` array). This kernel copies each row where it goes, its output aliasing the pages.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp

from mmjax.kernels_cpu.registration import register, runs_here
from mmjax.types import Array, Float, Int

SOURCE = Path(__file__).with_name("write_kv_pages.cc")
TARGET, SYMBOL = "mmjax_write_kv_pages", "MmjaxWriteKvPages"
DTYPES = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))


def write_kv_unavailable(dtype) -> str | None:
    """None if the kernel writes a cache of ``dtype`` here (building it now if needed), else why not."""
    reason = runs_here()
    if reason is not None:
        return reason
    if jnp.dtype(dtype) not in DTYPES:
        return f"dtype {jnp.dtype(dtype)} (the kernel writes 16-bit caches; XLA scatters float32 in place)"
    return register(TARGET, SOURCE, SYMBOL)


def write_kv_rows_cpu(pages: Float[Array, "K A G H"], rows: Float[Array, "T K H"],
                      slots: Int[Array, "T"]) -> Float[Array, "K A G H"]:
    """``pages`` with ``rows[t]`` (token ``t``'s row of each KV head) at slot ``slots[t]`` (negative or past the
    end: dropped), written in place when ``pages`` is donated. The rows come token-major, as the projections
    make them. Call only where ``write_kv_unavailable(pages.dtype)`` is None."""
    call = jax.ffi.ffi_call(TARGET, jax.ShapeDtypeStruct(pages.shape, pages.dtype), input_output_aliases={0: 0})
    return call(pages, rows.astype(pages.dtype), slots.astype(jnp.int32))
