"""Banded segment attention: when every segment is a contiguous run of at most ``block`` rows, O(P x block).

Qwen2.5-VL's windowed layers attend within windows, and rows are in window
order, so each window is a run of rows no longer than a full window's patches
(known statically from the config). Cut the rows into blocks of ``block`` rows,
at least the longest run: a run that touches a query block lies within it and
its two neighbours, so each query block attends only those ``3 * block`` keys,
under the same segment mask as the dense attention. The result equals it.

Query blocks go ``chunk`` at a time (``lax.map``), each chunk under
``jax.checkpoint``: the forward's live scores are ``[chunk, N, block, band]``
whatever ``P``, and the backward recomputes a chunk's probabilities rather than
keeping all of them (a cheap band, not worth a hand-written gradient).

Shape letters: ``P`` packed rows (query and key rows alike), ``N`` heads, ``H``
head dimension; ``chunks`` steps of the map, ``chunk`` query blocks of a step,
``block`` rows of one block, ``band`` the ``3 * block`` key rows of a query
block. In einsum strings ``b`` is a chunk's blocks, ``q`` and ``k`` a block's
query and key rows.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from mmjax.models.common.segment_blocks import MASKED, TINY, pad_to_blocks, pair_mask
from mmjax.types import Array, Bool, Float, Int, shape_checked


@shape_checked
def banded_segment_attention(
    q: Float[Array, "P N H"], k: Float[Array, "P N H"], v: Float[Array, "P N H"],
    segments: Int[Array, "P"], valid: Bool[Array, "P"], *, block: int, chunk: int,
) -> Float[Array, "P N H"]:
    """Attention within segments, each a contiguous run of at most ``block`` rows; a row that sees nothing gets 0.

    Equal to ``segment_attention.dense_segment_attention`` under that contract (a longer or
    scattered segment would silently lose its far rows). ``chunk``: query blocks per step; ``P``
    is padded (masked rows) up to whole chunks.
    """
    if block < 1 or chunk < 1:
        raise ValueError(f"block ({block}) and chunk ({chunk}) must be positive")
    rows = q.shape[0]
    blocks = -(-rows // block)
    chunk = -(-blocks // -(-blocks // chunk))  # as even as the chunks can be: padding under one block per chunk
    q, k, v, segments, valid = pad_to_blocks(q, k, v, segments, valid, chunk * block)
    chunks = q.shape[0] // (chunk * block)
    by_chunk = lambda x: x.reshape(chunks, chunk * block, *x.shape[1:])  # noqa: E731
    xs = (by_chunk(q), by_chunk(segments), by_chunk(valid),
          *(_with_halo(by_chunk(x), block) for x in (k, v, segments, valid)))
    out = jax.lax.map(jax.checkpoint(functools.partial(_attend_chunk, block=block)), xs)
    return out.reshape(q.shape)[:rows]


def _with_halo(x: Array, block: int) -> Array:
    """``[chunks, (chunk + 2) * block, ...]``: each chunk's rows with the block before it and the block after it.

    Zeros stand in before the first chunk and after the last: as keys their valid is False, so they are masked.
    """
    zeros = jnp.zeros_like(x[:1, :block])
    before = jnp.concatenate([zeros, x[:-1, -block:]])
    after = jnp.concatenate([x[1:, :block], zeros])
    return jnp.concatenate([before, x, after], axis=1)


def _band(x: Array, block: int) -> Array:
    """``[chunk, band, ...]`` from a chunk's rows with halo: query block ``i``'s keys are blocks ``i - 1 .. i + 1``."""
    blocks = x.reshape(-1, block, *x.shape[1:])  # chunk + 2 blocks
    return jnp.concatenate([blocks[:-2], blocks[1:-1], blocks[2:]], axis=1)


def _attend_chunk(xs: tuple[Array, ...], *, block: int) -> Array:
    """One chunk of query blocks, each against its band: the dense reference's arithmetic, per block."""
    q, seg_q, valid_q, k, v, seg_k, valid_k = xs  # q: [chunk * block, N, H]; k, v: [(chunk + 2) * block, N, H]
    q = q.reshape(-1, block, *q.shape[1:])
    k, v, seg_k, valid_k = (_band(x, block) for x in (k, v, seg_k, valid_k))
    seg_q, valid_q = seg_q.reshape(-1, block), valid_q.reshape(-1, block)
    mask = pair_mask(seg_q, valid_q, seg_k, valid_k)[:, None]  # [chunk, 1, block, band]: every head alike
    scores = jnp.einsum("bqNH,bkNH->bNqk", q, k, preferred_element_type=jnp.float32) * q.shape[-1] ** -0.5
    scores = jnp.where(mask, scores, MASKED)
    weights = jnp.where(mask, jnp.exp(scores - jnp.max(scores, axis=-1, keepdims=True)), 0.0)
    probs = weights / jnp.maximum(jnp.sum(weights, axis=-1, keepdims=True), TINY)
    out = jnp.einsum("bNqk,bkNH->bqNH", probs.astype(v.dtype), v)
    return out.reshape(-1, *out.shape[2:])
