"""Ragged paged attention in plain XLA, tiled like the kernels: the fast path on hosts without one (CPU).

The packed tokens are cut into query tiles of at most ``block_q`` tokens of one
sequence (``_tiles.plan_query_tiles``, the plan the Pallas kernels use). Two
loops with traced trip counts, like a kernel's grid, do the work: over the
step's real tiles, and inside each over the K/V blocks of ``block_kv`` keys that
meet the keys its rows see (``_tiles.key_bounds``: from the window's start, or 0,
up to its last query, or to the end of a bidirectional span). So a step costs what
its real tokens and windows cost, never the block-table width (``max_model_len``):
a decode step over 600-token contexts in an engine of ``max_model_len`` 4096 reads 600
tokens of K/V per sequence (256 with a window of 256), and a prefill tile skips the
blocks after it (and those before its window).

Each block is one online-softmax update (float32, as the kernels and the
reference; ``_tiles.attend_block``, the kernels' own step, once per KV head)
over ``[K, block_q * Q, block_kv]`` logits that stay in cache. Measured on the
2-core CPU for one layer of a 2048-token prefill step (8 heads of 64, four
~600-token prompts), this takes 52 ms where one batched einsum over every tile
took 225 ms: its large intermediates cost more than their FLOPs. Decode steps use tiles of one token
(``block_q=1``), prefill ones of
``DEFAULT_BLOCK_Q``. The loops are ``while_loop``s: forward-only, like every
paged path (training differentiates the dense model).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax

from mmjax.kernels_pallas import _tiles
from mmjax.types import Array, Float, Int, shape_checked

#: Query tokens per prefill tile on CPU: big enough for efficient matmuls, small enough to bound padding.
DEFAULT_BLOCK_Q = 128
#: Keys per block of a prefill tile's loop (rounded down to whole pages): few loop trips, little work past
#: the context. Measured on the 2-core CPU, one layer of a 2048-token prefill of four ~600-token prompts:
#: 46 ms at 128 keys, 41 ms at 256, 55 ms at 512.
DEFAULT_BLOCK_KV = 256
#: Keys per block of a decode step's loop (one query row per head): 3.4 ms a layer for eight 650-token
#: contexts at 128 keys, 3.8 ms at 256.
DECODE_BLOCK_KV = 128


@functools.partial(jax.jit, static_argnames=("sm_scale", "block_q", "block_kv"))
@shape_checked
def ragged_paged_attention_tiled(
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
    block_q: int = DEFAULT_BLOCK_Q,
    block_kv: int = DEFAULT_BLOCK_KV,
) -> Float[Array, "T N H"]:
    """Attention of each packed query token over its sequence's pages (GQA; causal unless bounded).

    Inputs as ``ragged_paged_attention_reference``; tokens of no sequence come out as zeros.
    In the einsums ``r`` is a row of a query tile (``block_q * Q`` rows: token, then
    query head of the KV head's group) and ``S`` a key of the current block.
    """
    num_tokens, num_heads, head_dim = q.shape
    num_kv_heads, _, page_size, _ = k_pages.shape
    pages_per_seq = block_tables.shape[1]
    group = num_heads // num_kv_heads
    scale = 1.0 / math.sqrt(head_dim) if sm_scale is None else sm_scale
    block_q = min(block_q, num_tokens)
    block_pages = max(1, min(pages_per_seq, block_kv // page_size))
    block_keys = block_pages * page_size

    tiles = _tiles.plan_query_tiles(cu_q_lens, kv_lens, num_seqs, num_tokens, block_q)
    qt = _tiles.gather_query_tiles(q, tiles, num_kv_heads).astype(jnp.float32)  # [m, K, r, H]
    bounds = _tiles.key_bounds(tiles, kv_lens, group, key_start, key_end)
    _, _, num_rows, _ = qt.shape
    # Block tables padded with the null page by a block, so a block from any page of the table is whole.
    tables = jnp.pad(block_tables, ((0, 0), (0, block_pages)))  # [B, W + block_pages]
    # The kernels' online-softmax step, once per KV head (the mask is the same for every head).
    attend_heads = jax.vmap(_tiles.attend_block, in_axes=(0, 0, 0, 0, None, None))
    init = jax.vmap(lambda _: _tiles.init_softmax_state(num_rows, head_dim))(jnp.arange(num_kv_heads))

    def attend_tile(t: Array, out: Array) -> Array:
        seq, lo, hi, q_tile = tiles.seq[t], bounds.lo[t], bounds.hi[t], qt[t]  # q_tile [K, r, H]
        row_start, row_end = bounds.row_start[t][:, None], bounds.row_end[t][:, None]  # [r, 1]

        def gather(pages: Array, ids: Array) -> Array:  # [K, A, G, H], [P] -> [K, S, H]
            return pages[:, ids].reshape(num_kv_heads, block_keys, head_dim).astype(jnp.float32)

        first_page = lo // page_size  # blocks start at the page of the tile's first key: none before it is read

        def attend_block(j: Array, state: _tiles.SoftmaxState) -> _tiles.SoftmaxState:
            page0 = first_page + j * block_pages
            ids = lax.dynamic_slice_in_dim(tables[seq], page0, block_pages)  # [P]
            key0 = page0 * page_size
            visible = _tiles.visible(block_keys, key0, row_start, row_end)  # [r, S]
            # Slots past hi may be past the sequence (stale or NaN): zero them so 0 * NaN cannot leak.
            v = jnp.where((key0 + jnp.arange(block_keys) < hi)[None, :, None], gather(v_pages, ids), 0.0)
            return attend_heads(state, q_tile, gather(k_pages, ids), v, visible, scale)

        # Only the blocks that meet [lo, hi): from the window's first page to the last visible key.
        num_blocks = (hi - first_page * page_size + block_keys - 1) // block_keys
        state = lax.fori_loop(0, num_blocks, attend_block, init)
        return lax.dynamic_update_index_in_dim(out, _tiles.finish(state), t, 0)

    # Real tiles come first (plan_query_tiles); the others stay zero.
    out = lax.fori_loop(0, jnp.sum(tiles.rows > 0), attend_tile, jnp.zeros_like(qt))
    return _tiles.scatter_output_tiles(out.astype(q.dtype), tiles, num_tokens, num_heads)
