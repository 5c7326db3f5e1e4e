"""Key-block attention: each query's result in one fixed order, whatever else its step holds.

The batch-invariant attention (``mmjax.batch_invariant``). A query token walks the key positions in
blocks of ``KEY_BLOCK`` aligned at position 0 (block ``j``: ``[16 j, 16 j + 16)``), and each block it sees
is one online-softmax update of float32 sums in one order (``fixed_order_sum``): the logits (``q . k``
summed over the head dim), the block's maximum, the weights and ``P V`` (summed over the block's keys), the
running sums rescaled and rounded before the block's are added (``separately``). A block with no key
it sees leaves its sums as they were, and a key it does not see adds exact zeros, so how many blocks the
step walks (its longest context), which tokens share the step, how its prompt was chunked and how the
keys are paged do not change a bit. The dense form (``dense_key_block_attention``: training, ``score``)
and the paged form (``paged_key_block_attention``: the engine) read their blocks differently and run the
same updates (``attend_in_key_blocks``).

Every token gathers its own copy of each block (``[T, KEY_BLOCK, K, H]``), so a prefill chunk costs about
``T`` times a decode token's reads: the price of independence, for a mode that asks for it.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from mmjax.batch_invariant import KEY_BLOCK, elementwise, fixed_order_sum, separately
from mmjax.kv_cache.metadata import AttentionMetadata
from mmjax.kv_cache.pages import KVPages
from mmjax.types import Array, Float, Int

#: ``read_block(j) -> (k, v)``: block ``j``'s keys and values as each token sees them, ``[T, KEY_BLOCK, K, H]``.
BlockReader = Callable[[Array], tuple[Array, Array]]


def attend_in_key_blocks(q: Float[Array, "T N H"], read_block: BlockReader, key_start: Int[Array, "T"],
                         key_end: Int[Array, "T"], num_blocks: int | Array, sm_scale: float) -> Float[Array, "T N H"]:
    """Token ``t`` attends to the key positions ``[key_start[t], key_end[t])`` of blocks ``0 .. num_blocks - 1``.

    ``num_blocks``: a Python int (a ``scan``: differentiable) or a traced one (a ``while`` loop: the step's
    real context). A token that sees no key comes out as zeros. Returns q's dtype.
    """
    num_tokens, num_heads, head_dim = q.shape
    k0, _ = jax.eval_shape(read_block, jnp.int32(0))
    num_kv_heads = k0.shape[2]
    group = num_heads // num_kv_heads
    qf = q.astype(jnp.float32).reshape(num_tokens, num_kv_heads, group, head_dim)
    offsets = jnp.arange(KEY_BLOCK, dtype=jnp.int32)

    def update(j, carry):
        top, total, acc = carry  # [T, K, Q], [T, K, Q], [T, K, Q, H]
        k, v = read_block(j)
        kf = jnp.swapaxes(k.astype(jnp.float32), 1, 2)  # [T, K, S, H]
        vf = jnp.swapaxes(v.astype(jnp.float32), 1, 2)
        key_pos = j * KEY_BLOCK + offsets
        seen = (key_pos[None, :] >= key_start[:, None]) & (key_pos[None, :] < key_end[:, None])  # [T, S]
        seen4 = seen[:, None, None, :]
        logits, = separately(fixed_order_sum(qf[:, :, :, None, :] * kf[:, :, None, :, :]) * sm_scale)  # [T, K, Q, S]
        logits = jnp.where(seen4, logits, -jnp.inf)
        new_top = jnp.maximum(top, jnp.max(logits, axis=-1))
        weights = jnp.where(seen4, elementwise("exp", logits - new_top[..., None]), 0.0)
        decay = elementwise("exp", top - new_top)  # 0 at the first block seen (top = -inf)
        values = jnp.swapaxes(vf, 2, 3)[:, :, None]  # [T, K, 1, H, S]: the block's keys last, to be summed
        kept_total, kept_acc = separately(total * decay, acc * decay[..., None])
        new_total = kept_total + fixed_order_sum(weights)
        new_acc = kept_acc + fixed_order_sum(weights[:, :, :, None, :] * values)
        any_seen = jnp.any(seen, axis=-1)[:, None, None]
        return (jnp.where(any_seen, new_top, top), jnp.where(any_seen, new_total, total),
                jnp.where(any_seen[..., None], new_acc, acc))

    shape = (num_tokens, num_kv_heads, group)
    carry = (jnp.full(shape, -jnp.inf, jnp.float32), jnp.zeros(shape, jnp.float32),
             jnp.zeros((*shape, head_dim), jnp.float32))
    _, total, acc = jax.lax.fori_loop(0, num_blocks, update, carry)
    # one reciprocal per row, then products: XLA may turn a division by a broadcast into a product by its
    # reciprocal in some programs and not others
    reciprocal, = separately(jnp.where(total > 0, 1.0 / jnp.where(total > 0, total, 1.0), 0.0))
    out = acc * reciprocal[..., None]
    return out.reshape(num_tokens, num_heads, head_dim).astype(q.dtype)


def dense_key_block_attention(q: Float[Array, "B T N H"], k: Float[Array, "B T K H"], v: Float[Array, "B T K H"],
                              positions: Int[Array, "B T"], *, key_ends: Int[Array, "B T"] | None = None,
                              sliding_window: int | None = None) -> Float[Array, "B T N H"]:
    """``dense_causal_attention``'s contract (token ``i`` of row ``b`` at position ``i``, ``-1`` padding), by
    ``attend_in_key_blocks``: the keys of a row are its own tokens, position ``p`` at index ``p``."""
    batch, length, num_heads, head_dim = q.shape
    positions = jnp.asarray(positions, jnp.int32).reshape(-1)
    ends = positions + 1 if key_ends is None else jnp.asarray(key_ends, jnp.int32).reshape(-1)
    ends = jnp.where(positions >= 0, jnp.minimum(ends, length), 0)
    starts = _window_starts(positions, sliding_window)
    row_base = jnp.repeat(jnp.arange(batch, dtype=jnp.int32) * length, length)  # [B * T]
    k_rows, v_rows = k.reshape(batch * length, *k.shape[2:]), v.reshape(batch * length, *v.shape[2:])
    offsets = jnp.arange(KEY_BLOCK, dtype=jnp.int32)

    def read_block(j):
        index = jnp.minimum(j * KEY_BLOCK + offsets, length - 1)
        rows = row_base[:, None] + index[None, :]  # [B * T, S]
        return k_rows[rows], v_rows[rows]

    out = attend_in_key_blocks(q.reshape(batch * length, num_heads, head_dim), read_block, starts, ends,
                               -(-length // KEY_BLOCK), head_dim**-0.5)
    return out.reshape(batch, length, num_heads, head_dim)


def paged_key_block_attention(q: Float[Array, "T N H"], pages: KVPages, metadata: AttentionMetadata, *,
                              sliding_window: int | None = None, sm_scale: float | None = None
                              ) -> Float[Array, "T N H"]:
    """``paged_attention``'s contract by ``attend_in_key_blocks``: token ``t``'s sequence (from ``cu_q_lens``)
    gives its pages (``block_tables``); the loop walks the step's longest context."""
    num_tokens, _, head_dim = q.shape
    page_size = pages.k.shape[2]
    cu = jnp.asarray(metadata.cu_q_lens, jnp.int32)
    num_seqs = jnp.asarray(metadata.num_seqs, jnp.int32).reshape(())
    token = jnp.arange(num_tokens, dtype=jnp.int32)
    seq = jnp.clip(jnp.searchsorted(cu[1:], token, side="right").astype(jnp.int32), 0, cu.shape[0] - 2)
    live = token < cu[num_seqs]
    positions = jnp.asarray(metadata.positions, jnp.int32)
    kv_lens = jnp.asarray(metadata.kv_lens, jnp.int32)[seq]
    ends = jnp.where(live, jnp.minimum(jnp.asarray(metadata.key_ends, jnp.int32), kv_lens), 0)
    starts = _window_starts(positions, sliding_window)
    tables = jnp.asarray(metadata.block_tables, jnp.int32)[seq]  # [T, W]
    offsets = jnp.arange(KEY_BLOCK, dtype=jnp.int32)

    def read_block(j):
        key_pos = j * KEY_BLOCK + offsets  # [S]
        page_col = jnp.minimum(key_pos // page_size, tables.shape[1] - 1)
        page = tables[:, page_col]  # [T, S]
        slot = key_pos % page_size
        k = pages.k[:, page, slot[None, :]]  # [K, T, S, H]
        v = pages.v[:, page, slot[None, :]]
        return jnp.moveaxis(k, 0, 2), jnp.moveaxis(v, 0, 2)  # [T, S, K, H]

    num_blocks = -(-jnp.max(ends, initial=0) // KEY_BLOCK)
    scale = head_dim**-0.5 if sm_scale is None else sm_scale
    return attend_in_key_blocks(q, read_block, starts, ends, num_blocks, scale)


def _window_starts(positions: Int[Array, "T"], sliding_window: int | None) -> Int[Array, "T"]:
    if sliding_window is None:
        return jnp.zeros_like(positions)
    return jnp.maximum(positions - (sliding_window - 1), 0)
