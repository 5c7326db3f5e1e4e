"""`paged_attention`: the Pallas kernel on GPU/TPU, the native kernel on CPU, over one layer's pages.

It takes the layer's `KVPages` and the step's `AttentionMetadata` and hands
their arrays to a kernel (`mmjax.kernels_pallas`, `mmjax.kernels_cpu`: they see only arrays).
`write_and_attend` is the whole step of a layer (store this step's K/V, then
attend), returning the new pages.

Which keys a token sees: up to ``metadata.key_ends`` (its position + 1, or the end of its
bidirectional span), from ``position - sliding_window + 1`` in a layer with a sliding window
(transformers' ``kv > q - window``), else from 0. The kernels and the XLA path read only those
keys' blocks (the reference reads every key of a sequence).
"""

from __future__ import annotations

import functools
import logging
from typing import Any, Literal

import jax
import jax.numpy as jnp

from mmjax.attention.key_blocks import paged_key_block_attention
from mmjax.batch_invariant import batch_invariant
from mmjax.kernels_cpu import kernel_unavailable, ragged_paged_attention_cpu
from mmjax.kernels_cpu.write_kv_pages import write_kv_rows_cpu, write_kv_unavailable
from mmjax.kernels_pallas.ragged_paged_attention import (
    ragged_paged_attention,
    ragged_paged_attention_reference,
)
from mmjax.kernels_pallas.ragged_paged_attention_tiled import (
    DECODE_BLOCK_KV, DEFAULT_BLOCK_KV, DEFAULT_BLOCK_Q, ragged_paged_attention_tiled)
from mmjax.kv_cache import AttentionMetadata, KVPages, write_kv_to_pages
from mmjax.types import Array, Float, Int, shape_checked

Impl = Literal["auto", "pallas", "cpu", "xla", "reference"]
IMPLS = ("auto", "pallas", "cpu", "xla", "reference")
_log = logging.getLogger(__name__)


def resolve_impl(impl: Impl) -> str:
    """"auto" -> "pallas" on GPU/TPU, "cpu" (the native CPU kernel) elsewhere.

    "xla" is the plain-XLA path (``ragged_paged_attention_tiled``): its loop over
    K/V blocks stops at the step's real context, as the kernels do. "auto" falls
    back to it where the CPU kernel cannot be built (no C++ compiler).
    """
    if impl not in IMPLS:
        raise ValueError(f"impl: expected one of {IMPLS}, got {impl!r}")
    if impl == "auto":
        return "pallas" if jax.default_backend() in ("gpu", "tpu") else "cpu"
    return impl


@functools.cache
def _warn_fallback(reason: str) -> None:
    _log.warning("mmjax: the CPU attention kernel is not used (%s); attention runs as plain XLA, slower", reason)


def window_starts(positions: Int[Array, "T"], sliding_window: int | None) -> Int[Array, "T"] | None:
    """The first key each token sees in a layer with a window of `sliding_window` keys (its own
    included): ``max(position - sliding_window + 1, 0)``; None (from 0) without a window."""
    if sliding_window is None:
        return None
    if isinstance(sliding_window, bool) or not isinstance(sliding_window, int) or sliding_window < 1:
        raise ValueError(f"sliding_window: expected a positive int or None, got {sliding_window!r}")
    return jnp.maximum(jnp.asarray(positions, jnp.int32) - (sliding_window - 1), 0)


@shape_checked
def paged_attention(
    q: Float[Array, "T N H"],
    pages: KVPages,
    metadata: AttentionMetadata,
    *,
    sliding_window: int | None = None,
    sm_scale: float | None = None,
    impl: Impl = "auto",
    **kernel_options: Any,
) -> Float[Array, "T N H"]:
    """Attention of the step's query tokens over their sequences' pages.

    Token t sees the keys ``[max(position - sliding_window + 1, 0), metadata.key_ends[t])`` (from 0
    when `sliding_window` is None). ``impl="pallas"`` on CPU runs the kernel in interpret mode (slow;
    for tests). `kernel_options` (block_q, pages_per_block, backend) go to the Pallas kernel.
    """
    if batch_invariant():  # every query in one fixed order (mmjax.batch_invariant), whatever impl says
        return paged_key_block_attention(q, pages, metadata, sliding_window=sliding_window, sm_scale=sm_scale)
    args = (q, pages.k, pages.v, metadata.kv_lens, metadata.block_tables, metadata.cu_q_lens,
            metadata.num_seqs)
    bounds = dict(key_start=window_starts(metadata.positions, sliding_window),
                  key_end=jnp.asarray(metadata.key_ends, jnp.int32))
    requested, impl = impl, resolve_impl(impl)
    if impl == "cpu":
        reason = kernel_unavailable(q.shape[2], q.dtype)
        if reason is None:
            return ragged_paged_attention_cpu(*args, **bounds, sm_scale=sm_scale)
        if requested == "cpu":
            raise ValueError(f"impl='cpu': the CPU attention kernel cannot run: {reason}")
        _warn_fallback(reason)
        impl = "xla"
    if impl == "xla":  # decode steps: one-token tiles, one per sequence
        decode = metadata.max_q_len == 1
        return ragged_paged_attention_tiled(*args, **bounds, sm_scale=sm_scale,
                                            block_q=1 if decode else DEFAULT_BLOCK_Q,
                                            block_kv=DECODE_BLOCK_KV if decode else DEFAULT_BLOCK_KV)
    if impl == "reference":
        return ragged_paged_attention_reference(*args, **bounds, sm_scale=sm_scale, max_q_len=metadata.max_q_len)
    interpret = jax.default_backend() not in ("gpu", "tpu")
    return ragged_paged_attention(
        *args, **bounds, sm_scale=sm_scale, max_q_len=metadata.max_q_len, interpret=interpret, **kernel_options)


def write_kv(pages: KVPages, k: Float[Array, "T K H"], v: Float[Array, "T K H"],
             slot_mapping: Int[Array, "T"]) -> KVPages:
    """``write_kv_to_pages``; a 16-bit cache on CPU through the native kernel (``write_kv_rows_cpu``: XLA's CPU
    backend would convert every page to float32 and back around its scatter, each step and layer)."""
    if write_kv_unavailable(pages.k.dtype) is not None:
        return write_kv_to_pages(pages, k, v, slot_mapping)
    return KVPages(write_kv_rows_cpu(pages.k, k, slot_mapping), write_kv_rows_cpu(pages.v, v, slot_mapping))


@shape_checked
def write_and_attend(
    q: Float[Array, "T N H"],
    k: Float[Array, "T K H"],
    v: Float[Array, "T K H"],
    pages: KVPages,
    metadata: AttentionMetadata,
    **options: Any,
) -> tuple[Float[Array, "T N H"], KVPages]:
    """Stores this step's K/V at ``metadata.slot_mapping``, then attends; returns (out, new pages).

    `options` go to ``paged_attention`` (sliding_window, sm_scale, impl, kernel options)."""
    pages = write_kv(pages, k, v, metadata.slot_mapping)
    return paged_attention(q, pages, metadata, **options), pages
