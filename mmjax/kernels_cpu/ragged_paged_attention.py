"""Ragged paged attention as a native CPU kernel (an XLA FFI custom call; C++ in the .cc beside this file).

Same inputs, outputs and semantics as ``ragged_paged_attention_reference``
(causal unless ``key_start``/``key_end`` bound the keys each token sees, GQA, float32
softmax, tokens of no live sequence are zeros); float32 and bfloat16. A tile reads only
the keys its rows see, so a sliding window's layer costs its window, not its context.
XLA's CPU backend copies every gathered K/V page out of the cache before it multiplies;
this kernel reads each page where it lies and spreads (sequence, KV head, 64-query tile)
items over XLA's intra-op threads.
Measured on the 2-core benchmark host, one layer of the benchmark's shapes
(8 heads of 64, 16-token pages, pages in random order; ``benchmarks/paged_attention.py``
prints the current figures): a decode step over eight ~630-token contexts
1.0-1.3 ms against the plain-XLA tiled path's 3.2-5.6 ms; a 2048-token prefill
step of four ~600-token prompts 14-16 ms against 29-35 ms.

The library is built on first use for each head dim (``mmjax.kernels_cpu.build``,
~3 s, then cached on disk; ``mmjax.load`` starts it on a thread) and registered
with XLA under a name per head dim. ``kernel_unavailable()`` says why it cannot
be used here (no compiler, a failed build, ``MMJAX_CPU_KERNEL=0``, a float16
input, a GPU/TPU backend), so callers can fall back to plain XLA.
"""

from __future__ import annotations

import functools
import math
import threading
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from mmjax.kernels_cpu.registration import register, register_in_background, runs_here
from mmjax.kernels_pallas.ragged_paged_attention import with_validated_inputs
from mmjax.types import Array, Float, Int, shape_checked

SOURCE = Path(__file__).with_name("ragged_paged_attention.cc")
DTYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16))
#: Head dims the kernel is built for (one library each; a stack tile holds 4 rows of H floats).
MAX_HEAD_DIM = 512


def target_name(head_dim: int) -> str:
    return f"mmjax_ragged_paged_attention_h{head_dim}"


def _register(head_dim: int) -> str | None:
    return register(target_name(head_dim), SOURCE, "MmjaxRaggedPagedAttention", {"MMJAX_HEAD_DIM": head_dim})


def build_in_background(head_dim: int) -> threading.Thread | None:
    """Starts building the kernel for `head_dim` on a thread, so the ~3 s of a first build overlap other
    work (``mmjax.load`` calls it before reading the weights). None where the kernel is not used here."""
    if not 0 < head_dim <= MAX_HEAD_DIM:
        return None
    return register_in_background(target_name(head_dim), SOURCE, "MmjaxRaggedPagedAttention",
                                  {"MMJAX_HEAD_DIM": head_dim})


def kernel_unavailable(head_dim: int, dtype) -> str | None:
    """None if the kernel serves this head dim and dtype here (building it now if needed), else why not."""
    reason = runs_here()
    if reason is not None:
        return reason
    if jnp.dtype(dtype) not in DTYPES:
        return f"dtype {jnp.dtype(dtype)} (the kernel takes float32 or bfloat16)"
    if not 0 < head_dim <= MAX_HEAD_DIM:
        return f"head dim {head_dim} (the kernel takes 1 to {MAX_HEAD_DIM})"
    return _register(head_dim)


@functools.partial(jax.jit, static_argnames=("sm_scale",))
@with_validated_inputs
@shape_checked
def ragged_paged_attention_cpu(
    q: Float[Array, "T N H"],
    k_pages: Float[Array, "K A G H"],
    v_pages: Float[Array, "K A G H"],
    kv_lens: Int[Array, "B"],
    block_tables: Int[Array, "B W"],
    cu_q_lens: Int[Array, "B+1"],
    num_seqs: Int[Array, "1"],
    *,
    key_start: Int[Array, "T"] | None = None,
    key_end: Int[Array, "T"] | None = None,
    sm_scale: float | None = None,
) -> Float[Array, "T N H"]:
    """Attention of each packed query token over its sequence's pages, on the CPU kernel.

    Inputs as ``ragged_paged_attention_reference``. Raises a ValueError naming
    the reason if the kernel cannot serve these inputs here (see `kernel_unavailable`).
    A bound left None goes to the kernel as an empty array, which it reads as the causal default.
    """
    head_dim = q.shape[2]
    reason = kernel_unavailable(head_dim, q.dtype)
    if reason is not None:
        raise ValueError(f"the CPU attention kernel cannot run: {reason}")
    scale = 1.0 / math.sqrt(head_dim) if sm_scale is None else sm_scale
    call = jax.ffi.ffi_call(target_name(head_dim), jax.ShapeDtypeStruct(q.shape, q.dtype))
    causal = jnp.zeros((0,), jnp.int32)
    bounds = (causal if key_start is None else key_start, causal if key_end is None else key_end)
    return call(q, k_pages, v_pages, kv_lens, block_tables, cu_q_lens, num_seqs, *bounds, sm_scale=np.float32(scale))


def bidirectional_attention_cpu(q: Float[Array, "I P N H"], k: Float[Array, "I P N H"], v: Float[Array, "I P N H"],
                                *, sm_scale: float | None = None, page_size: int = 16) -> Float[Array, "I P N H"]:
    """Each of ``I`` sequences of ``P`` rows attending all of its own rows (a vision tower's attention), on
    the CPU kernel: K and V laid out as one run of pages per sequence, every row's keys ``[0, P)``. Call
    only where ``kernel_unavailable(H, q.dtype)`` is None."""
    num_seqs, rows, num_heads, head_dim = q.shape
    pages = -(-rows // page_size)

    def paged(x: Array) -> Array:  # [I, P, N, H] -> [N, I * pages, G, H]
        x = jnp.pad(x, ((0, 0), (0, pages * page_size - rows), (0, 0), (0, 0)))
        x = x.reshape(num_seqs, pages, page_size, num_heads, head_dim).transpose(3, 0, 1, 2, 4)
        return x.reshape(num_heads, num_seqs * pages, page_size, head_dim)

    out = ragged_paged_attention_cpu(
        q.reshape(num_seqs * rows, num_heads, head_dim), paged(k), paged(v),
        jnp.full((num_seqs,), rows, jnp.int32), jnp.arange(num_seqs * pages, dtype=jnp.int32).reshape(num_seqs, pages),
        jnp.arange(num_seqs + 1, dtype=jnp.int32) * rows, jnp.array([num_seqs], jnp.int32),
        key_start=jnp.zeros((num_seqs * rows,), jnp.int32), key_end=jnp.full((num_seqs * rows,), rows, jnp.int32),
        sm_scale=sm_scale)
    return out.reshape(num_seqs, rows, num_heads, head_dim)
