"""Blockwise (flash-style) segment attention: online softmax over key blocks, memory O(P x block), plain JAX.

The rows are cut into blocks of ``block`` rows. Each query block (``lax.map``,
one at a time) loops over its partner key blocks, keeping a running max, row
sum and float32 output (the online softmax), so no ``[P, P]`` array exists.
Partners are the blocks from the first to the last whose segment range meets
the query block's: with one segment per frame (runs in order), a frame's rows
visit only the blocks it spans, so a video costs the sum of its frames'
squares, not ``P**2`` (measured: 16384 rows of 576-row frames, 3.1 s against
7.1 s for a scan over every key block that skips the others by ``lax.cond``).

The gradient is a ``custom_vjp``: the forward keeps only the output and each
row's log-sum-exp, and the backward recomputes each block pair's
probabilities (as FlashAttention does), so ``jax.grad`` is O(P x block) too;
autodiff of the loops would store every pair's probabilities, O(P^2), and
cannot go through loops with traced bounds at all.

Shape letters: ``P`` packed rows (query and key rows alike), ``N`` heads, ``H``
head dimension; ``blocks`` row blocks, ``block`` rows of one block. In einsum
strings ``q`` and ``k`` are a block's query and key rows.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from mmjax.models.common.segment_blocks import MASKED, TINY, pad_to_blocks, pair_mask
from mmjax.types import Array, Bool, Float, Int, shape_checked


@shape_checked
def blockwise_segment_attention(
    q: Float[Array, "P N H"], k: Float[Array, "P N H"], v: Float[Array, "P N H"],
    segments: Int[Array, "P"], valid: Bool[Array, "P"], *, block: int,
) -> Float[Array, "P N H"]:
    """Bidirectional attention within segments (any layout); a row that sees nothing gets zeros.

    Equal to ``segment_attention.dense_segment_attention`` up to float32 rounding. ``P`` need not
    be a multiple of ``block``: padding rows are appended and dropped.
    """
    rows = q.shape[0]
    out = _flash(*pad_to_blocks(q, k, v, segments, valid, block), block)
    return out[:rows]


def _split(x: Array, block: int) -> Array:
    """``[P, ...]`` -> ``[blocks, block, ...]``."""
    return x.reshape(-1, block, *x.shape[1:])


def _to_blocks(x: Array, block: int) -> Array:
    """``[P, N, H]`` -> ``[blocks, N, block, H]``: head-major, so that each block pair's products are plain batched
    matmuls (no transposes inside the loops)."""
    return jnp.swapaxes(_split(x, block), 1, 2)


def _from_blocks(x: Array) -> Array:
    """``[blocks, N, block, H]`` -> ``[P, N, H]``."""
    x = jnp.swapaxes(x, 1, 2)
    return x.reshape(-1, *x.shape[2:])


def _scores(q: Array, k: Array) -> Array:
    """``[N, q, k]`` scaled float32 scores of head-major blocks ``[N, q, H]``, ``[N, k, H]``."""
    return jnp.einsum("NqH,NkH->Nqk", q, k, preferred_element_type=jnp.float32) * q.shape[-1] ** -0.5


def _segment_range(segments: Array, valid: Array) -> tuple[Array, Array]:
    """``(lowest, highest)`` ``[blocks]`` segment id of each block's real rows; none: an empty range."""
    info = jnp.iinfo(segments.dtype)
    lowest = jnp.min(jnp.where(valid, segments, info.max), axis=1)
    highest = jnp.max(jnp.where(valid, segments, info.min), axis=1)
    return lowest, highest


def _partner_range(segments: Array, valid: Array, block: int) -> tuple[Array, Array]:
    """``(first, last)`` ``[blocks]``: the blocks from ``first`` to ``last`` hold every block that can share a
    segment with each block (``last < first`` when none can: a block of padding).

    A pair can share a segment only if the blocks' segment ranges overlap; the first to the last such
    partner is exact when segments are runs in order (frames), and merely spans the partners otherwise
    (the mask keeps the result exact). The relation is symmetric: the same range serves query blocks
    (their key blocks) and key blocks (their query blocks).
    """
    lo, hi = _segment_range(_split(segments, block), _split(valid, block))
    meets = jnp.maximum(lo[:, None], lo[None, :]) <= jnp.minimum(hi[:, None], hi[None, :])  # [blocks, blocks]
    first = jnp.argmax(meets, axis=1)
    last = meets.shape[1] - 1 - jnp.argmax(meets[:, ::-1], axis=1)
    return first, jnp.where(jnp.any(meets, axis=1), last, first - 1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _flash(q: Array, k: Array, v: Array, segments: Array, valid: Array, block: int) -> Array:
    return _from_blocks(_forward(q, k, v, segments, valid, block)[0])


def _forward(q: Array, k: Array, v: Array, segments: Array, valid: Array, block: int) -> tuple[Array, Array]:
    """``(out [blocks, N, block, H], lse [blocks, N, block])``: the output and each query row's log-sum-exp."""
    segs, val = _split(segments, block), _split(valid, block)
    first, last = _partner_range(segments, valid, block)
    k_blocks, v_blocks = _to_blocks(k, block), _to_blocks(v, block)
    num_heads, head_dim = q.shape[1:]

    def query_block(args):
        q_i, seg_i, val_i, first_i, last_i = args

        def step(j, carry):
            row_max, row_sum, acc = carry  # [N, q], [N, q]; float32 output [N, q, H]
            mask = pair_mask(seg_i, val_i, segs[j], val[j])
            scores = jnp.where(mask, _scores(q_i, k_blocks[j]), MASKED)
            new_max = jnp.maximum(row_max, jnp.max(scores, axis=-1))
            p = jnp.where(mask, jnp.exp(scores - new_max[..., None]), 0.0)
            scale = jnp.exp(row_max - new_max)  # rescales what was summed under the old max
            pv = jnp.einsum("Nqk,NkH->NqH", p.astype(v.dtype), v_blocks[j], preferred_element_type=jnp.float32)
            return new_max, row_sum * scale + jnp.sum(p, axis=-1), acc * scale[..., None] + pv

        init = (jnp.full((num_heads, block), MASKED, jnp.float32), jnp.zeros((num_heads, block), jnp.float32),
                jnp.zeros((num_heads, block, head_dim), jnp.float32))
        # Only the partner blocks: a loop with traced bounds, which the custom_vjp spares from autodiff.
        row_max, row_sum, acc = jax.lax.fori_loop(first_i, last_i + 1, step, init)
        out = acc / jnp.maximum(row_sum, TINY)[..., None]  # a row that saw nothing: 0 / tiny = 0
        # Unused where the row saw nothing: the backward's mask zeroes its probabilities.
        lse = jnp.where(row_sum > 0, row_max + jnp.log(jnp.maximum(row_sum, TINY)), 0.0)
        return out.astype(q.dtype), lse

    return jax.lax.map(query_block, (_to_blocks(q, block), segs, val, first, last))


def _flash_fwd(q, k, v, segments, valid, block):
    out, lse = _forward(q, k, v, segments, valid, block)
    return _from_blocks(out), (q, k, v, segments, valid, out, lse)


def _flash_bwd(block, residuals, d_out):
    """FlashAttention's backward: per block pair ``p = exp(s - lse)``, ``ds = p * (dp - rowsum(d_out * out))``."""
    q, k, v, segments, valid, out, lse = residuals
    segs, val = _split(segments, block), _split(valid, block)
    first, last = _partner_range(segments, valid, block)
    d_out = _to_blocks(d_out.astype(jnp.float32), block)
    delta = jnp.sum(d_out * out.astype(jnp.float32), axis=-1)  # [blocks, N, block]
    q_blocks = _to_blocks(q, block)
    scale = q.shape[-1] ** -0.5

    def key_block(d_q, key_args):
        k_j, v_j, seg_j, val_j, first_j, last_j = key_args

        def step(i, carry):
            d_q, d_k, d_v = carry
            q_i, do_i = q_blocks[i], d_out[i]
            mask = pair_mask(segs[i], val[i], seg_j, val_j)
            p = jnp.where(mask, jnp.exp(_scores(q_i, k_j) - lse[i][..., None]), 0.0)  # N q k
            d_v = d_v + jnp.einsum("Nqk,NqH->NkH", p, do_i)
            d_p = jnp.einsum("NqH,NkH->Nqk", do_i, v_j, preferred_element_type=jnp.float32)
            d_s = p * (d_p - delta[i][..., None]) * scale
            d_q = d_q.at[i].add(jnp.einsum("Nqk,NkH->NqH", d_s, k_j, preferred_element_type=jnp.float32))
            d_k = d_k + jnp.einsum("Nqk,NqH->NkH", d_s, q_i, preferred_element_type=jnp.float32)
            return d_q, d_k, d_v

        zeros = jnp.zeros(k_j.shape, jnp.float32)
        d_q, d_k, d_v = jax.lax.fori_loop(first_j, last_j + 1, step, (d_q, zeros, zeros))
        return d_q, (d_k, d_v)

    keys = (_to_blocks(k, block), _to_blocks(v, block), segs, val, first, last)
    d_q, (d_k, d_v) = jax.lax.scan(key_block, jnp.zeros(q_blocks.shape, jnp.float32), keys)
    return (_from_blocks(d_q).astype(q.dtype), _from_blocks(d_k).astype(k.dtype), _from_blocks(d_v).astype(v.dtype),
            None, None)


_flash.defvjp(_flash_fwd, _flash_bwd)
