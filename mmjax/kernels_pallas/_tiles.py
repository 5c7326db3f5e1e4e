"""What the GPU and TPU ragged kernels share: query tiles and the online-softmax step.

A *query tile* is up to ``block_q`` consecutive query tokens of ONE sequence,
so a kernel program never straddles two sequences. The ragged token axis is cut
into tiles by plain jnp in the wrapper (cheap: O(T N H) gather/scatter), which
keeps both kernels free of ragged bookkeeping. Inside a tile the ``Q`` query
heads of one KV head are stacked as rows, ``row = token * Q + head_in_group``, so
each K/V page is read once per KV head and multiplied against all ``block_q * Q`` rows.

Shapes: ``num_tiles`` tiles of ``tile_len`` (= ``block_q``) tokens; ``tile_rows``
(= ``block_q * Q``) rows of a tile; ``num_keys`` keys of a K/V block.

Which keys a row sees: query token ``t`` sees the keys ``[key_start[t], key_end[t])`` of its
sequence, clamped to ``[0, kv_len)`` — causal by default (``[0, position + 1)``), cut by a
sliding window (``key_start = position - window + 1``) or reaching to the end of a bidirectional
span (``key_end`` past ``position + 1``). ``key_bounds`` expands them to one ``[start, end)`` per
row (so the kernels' masks need no division by ``Q``, which Mosaic vectors handle poorly) and takes
each tile's union ``[lo, hi)``: a kernel reads only the K/V blocks that meet it, so a windowed
tile costs its window, not its context.
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
from jax import lax

from mmjax.types import Array, Float, Int

# Finite, so a fully masked block gives exp(0) * 0 instead of NaN from inf - inf.
MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)


class QueryTiles(NamedTuple):
    """Tile m holds tokens ``token_idx[m, :rows[m]]`` of sequence ``seq[m]``."""

    seq: Int[Array, "num_tiles"]  # owning sequence (0 for empty tiles)
    pos0: Int[Array, "num_tiles"]  # absolute position of the tile's first token
    rows: Int[Array, "num_tiles"]  # valid tokens in the tile (0 for empty tiles)
    token_idx: Int[Array, "num_tiles tile_len"]  # index into the packed token axis; -1 for padding


def max_tiles(num_tokens: int, num_batch: int, block_q: int) -> int:
    """Static bound on sum_b ceil(q_len_b / block_q) given sum_b q_len_b <= num_tokens."""
    return max(1, min((num_tokens + num_batch * (block_q - 1)) // block_q, num_tokens))


def plan_query_tiles(
    cu_q_lens: Int[Array, "B+1"], kv_lens: Int[Array, "B"], num_seqs: Int[Array, "1"],
    num_tokens: int, block_q: int,
) -> QueryTiles:
    """Cuts the packed token axis into per-sequence tiles of at most `block_q` tokens."""
    num_batch = kv_lens.shape[0]
    live = jnp.arange(num_batch) < num_seqs[0]
    q_lens = jnp.where(live, cu_q_lens[1:] - cu_q_lens[:-1], 0)
    tiles_per_seq = -(-q_lens // block_q)
    tile_end = jnp.cumsum(tiles_per_seq)
    m = jnp.arange(max_tiles(num_tokens, num_batch, block_q))
    seq = jnp.minimum(jnp.searchsorted(tile_end, m, side="right"), num_batch - 1)
    q_start = (m - (tile_end[seq] - tiles_per_seq[seq])) * block_q
    rows = jnp.where(m < tile_end[-1], jnp.clip(q_lens[seq] - q_start, 0, block_q), 0)
    pos0 = kv_lens[seq] - q_lens[seq] + q_start
    r = jnp.arange(block_q)
    token_idx = jnp.where(r < rows[:, None], cu_q_lens[seq][:, None] + q_start[:, None] + r, -1)
    empty = rows == 0
    return QueryTiles(
        seq=jnp.where(empty, 0, seq).astype(jnp.int32),
        pos0=jnp.where(empty, 0, pos0).astype(jnp.int32),
        rows=rows.astype(jnp.int32),
        token_idx=token_idx.astype(jnp.int32),
    )


def gather_query_tiles(
    q: Float[Array, "T N H"], tiles: QueryTiles, num_kv_heads: int
) -> Float[Array, "num_tiles K tile_rows H"]:
    """``[T, N, H] -> [num_tiles, K, tile_rows, H]``, rows ordered (token, head in group)."""
    _, num_heads, head_dim = q.shape
    group = num_heads // num_kv_heads
    num_tiles, block_q = tiles.token_idx.shape
    qt = q[jnp.maximum(tiles.token_idx, 0)]  # padding rows read token 0; they are never stored
    qt = qt.reshape(num_tiles, block_q, num_kv_heads, group, head_dim)
    return qt.transpose(0, 2, 1, 3, 4).reshape(num_tiles, num_kv_heads, block_q * group, head_dim)


def scatter_output_tiles(
    out_tiles: Float[Array, "num_tiles K tile_rows H"], tiles: QueryTiles, num_tokens: int, num_heads: int
) -> Float[Array, "T N H"]:
    """Inverse of `gather_query_tiles`; tokens of no tile (padding) come out as zeros."""
    num_tiles, num_kv_heads, _, head_dim = out_tiles.shape
    block_q = tiles.token_idx.shape[1]
    group = num_heads // num_kv_heads
    o = out_tiles.reshape(num_tiles, num_kv_heads, block_q, group, head_dim)
    o = o.transpose(0, 2, 1, 3, 4).reshape(num_tiles * block_q, num_heads, head_dim)
    idx = jnp.where(tiles.token_idx < 0, num_tokens, tiles.token_idx).reshape(-1)
    out = jnp.zeros((num_tokens, num_heads, head_dim), out_tiles.dtype)
    return out.at[idx].set(o, mode="drop")


class KeyBounds(NamedTuple):
    """The keys each row of each tile sees, ``[row_start, row_end)``, and their union per tile ``[lo, hi)``.

    Rows of padding tokens, and rows whose interval is empty, have ``row_start == row_end == 0`` and
    do not widen their tile's ``[lo, hi)``; a tile with no visible key has ``lo == hi == 0``. Every
    bound lies in ``[0, kv_len]`` of the tile's sequence, so a kernel that reads keys of ``[lo, hi)``
    only never reads past the sequence, whatever ``key_start``/``key_end`` held.
    """

    lo: Int[Array, "num_tiles"]  # first key any row of the tile sees
    hi: Int[Array, "num_tiles"]  # one past the last key any row of the tile sees
    row_start: Int[Array, "num_tiles tile_rows"]  # rows ordered (token, head in group), as the query tiles
    row_end: Int[Array, "num_tiles tile_rows"]


def key_bounds(
    tiles: QueryTiles, kv_lens: Int[Array, "B"], group: int,
    key_start: Int[Array, "T"] | None = None, key_end: Int[Array, "T"] | None = None,
) -> KeyBounds:
    """Per-row and per-tile key intervals of `tiles` (see `KeyBounds`); None means the causal default."""
    num_tiles, block_q = tiles.token_idx.shape
    valid = tiles.token_idx >= 0  # [num_tiles, tile_len]
    token = jnp.maximum(tiles.token_idx, 0)
    kv_len = kv_lens[tiles.seq][:, None]
    causal_end = tiles.pos0[:, None] + jnp.arange(block_q)[None, :] + 1
    start = jnp.zeros_like(token) if key_start is None else key_start[token]
    end = causal_end if key_end is None else key_end[token]
    start, end = jnp.clip(start, 0, kv_len), jnp.clip(end, 0, kv_len)
    seen = valid & (start < end)
    start, end = jnp.where(seen, start, 0), jnp.where(seen, end, 0)
    any_seen = jnp.any(seen, axis=1)
    lo = jnp.where(any_seen, jnp.min(jnp.where(seen, start, jnp.iinfo(jnp.int32).max), axis=1), 0)
    hi = jnp.max(end, axis=1)
    rows = lambda x: jnp.repeat(x, group, axis=1).astype(jnp.int32)  # noqa: E731  (token -> its Q rows)
    return KeyBounds(lo.astype(jnp.int32), hi.astype(jnp.int32), rows(start), rows(end))


class SoftmaxState(NamedTuple):
    m: Float[Array, "tile_rows 1"]  # running max of the logits
    l: Float[Array, "tile_rows 1"]  # running sum of exp(logits - m)  # noqa: E741 (the flash-attention name)
    acc: Float[Array, "tile_rows H"]  # running sum of exp(logits - m) @ v


def init_softmax_state(num_rows: int, head_dim: int) -> SoftmaxState:
    return SoftmaxState(
        m=jnp.full((num_rows, 1), MASK_VALUE, jnp.float32),
        l=jnp.zeros((num_rows, 1), jnp.float32),
        acc=jnp.zeros((num_rows, head_dim), jnp.float32),
    )


def visible(block_k: int, key0, row_start: Int[Array, "tile_rows 1"], row_end: Int[Array, "tile_rows 1"]) -> Array:
    """``[tile_rows, block_k]`` mask: key ``key0 + j`` lies in its row's ``[row_start, row_end)``."""
    s = lax.broadcasted_iota(jnp.int32, (row_start.shape[0], block_k), 1) + key0
    return (s >= row_start) & (s < row_end)


def attend_block(
    state: SoftmaxState, q: Array, k: Array, v: Array, mask: Array, sm_scale: float,
) -> SoftmaxState:
    """One flash-attention step over a K/V block; accumulates in float32.

    `v` rows beyond the sequence must already be zeroed: 0 * NaN garbage is NaN.
    """
    s = lax.dot_general(q, k, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)
    s = jnp.where(mask, s * sm_scale, MASK_VALUE)
    m_new = jnp.maximum(state.m, jnp.max(s, axis=1, keepdims=True))
    alpha = jnp.exp(state.m - m_new)
    p = jnp.where(mask, jnp.exp(s - m_new), 0.0)
    l_new = alpha * state.l + jnp.sum(p, axis=1, keepdims=True)
    pv = lax.dot_general(p.astype(v.dtype), v, (((1,), (0,)), ((), ())), preferred_element_type=jnp.float32)
    return SoftmaxState(m_new, l_new, alpha * state.acc + pv)


def finish(state: SoftmaxState) -> Array:
    """Normalised output; rows that saw no key (padding) give 0 instead of 0/0."""
    return state.acc / jnp.where(state.l == 0.0, 1.0, state.l)
