"""Ragged paged attention for TPU: Pallas with the Mosaic lowering.

The tile plan (per-tile sequence and the keys ``[lo, hi)`` its rows see, see
``_tiles.key_bounds``) and the flattened block tables are scalar-prefetched into
SMEM (`PrefetchScalarGridSpec`): four arrays of ``num_tiles`` (or ``B * W``) ints,
so the BlockSpec index maps can follow a sequence's block table: the Pallas pipeline
then double-buffers the page DMAs for us. ``pages_per_block`` pages are fetched
per grid step by passing the page arrays that many times, each BlockSpec
picking the next page of the table, counted from the page holding ``lo`` (a
sliding window's first key: the pages before it are never fetched); past the
page holding ``hi - 1`` the index is clamped to that page, so the pipeline issues
no new DMA and the body is skipped. Each row's own ``[start, end)`` is a VMEM
block ``[block_q * Q, 1]`` that follows the query tile (one per tile, not per
token in SMEM). Every block equals the array's trailing dims (``[G, H]``,
``[block_q * Q, H]``, ``[block_q * Q, 1]``), which keeps Mosaic's tiling rules satisfied for any H.

Grid: (query tile, KV head, page block) — the last axis reduces (online softmax
in float32 VMEM scratch). Public entry point:
`mmjax.kernels_pallas.ragged_paged_attention(backend="tpu")`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from mmjax.kernels_pallas import _tiles
from mmjax.types import Array, Float, Int

DEFAULT_ROWS = 128  # block_q * Q: one MXU pass of rows
DEFAULT_BLOCK_K = 128  # keys per grid step, i.e. pages_per_block * page size


def default_block_sizes(group: int, page_size: int) -> tuple[int, int]:
    """(block_q, pages_per_block) for the TPU kernel."""
    return max(1, DEFAULT_ROWS // group), max(1, DEFAULT_BLOCK_K // page_size)


def _kernel(
    seq_ref, lo_ref, hi_ref, bt_ref,  # scalar prefetch (SMEM)
    row_start_ref, row_end_ref, q_ref, *refs, sm_scale: float, pages_per_block: int,
):
    del seq_ref, bt_ref  # used by the index maps only
    k_refs, v_refs = refs[:pages_per_block], refs[pages_per_block : 2 * pages_per_block]
    o_ref, m_ref, l_ref, acc_ref = refs[2 * pages_per_block :]
    m, j = pl.program_id(0), pl.program_id(2)
    lo, hi = lo_ref[m], hi_ref[m]
    num_rows, head_dim = q_ref.shape
    page_size = k_refs[0].shape[0]
    first_page = lax.div(lo, page_size)

    @pl.when(j == 0)
    def _init():
        state = _tiles.init_softmax_state(num_rows, head_dim)
        m_ref[...], l_ref[...], acc_ref[...] = state.m, state.l, state.acc

    for i in range(pages_per_block):
        key0 = (first_page + j * pages_per_block + i) * page_size

        @pl.when(key0 < hi)
        def _attend(i=i, key0=key0):
            key = lax.broadcasted_iota(jnp.int32, (page_size, head_dim), 0) + key0
            # Slots past hi may be past the sequence (stale data or NaN), and 0 * NaN = NaN.
            v = jnp.where(key < hi, v_refs[i][...], 0)
            mask = _tiles.visible(page_size, key0, row_start_ref[...], row_end_ref[...])
            state = _tiles.SoftmaxState(m_ref[...], l_ref[...], acc_ref[...])
            state = _tiles.attend_block(state, q_ref[...], k_refs[i][...], v, mask, sm_scale)
            m_ref[...], l_ref[...], acc_ref[...] = state.m, state.l, state.acc

    @pl.when(j == pl.num_programs(2) - 1)
    def _finish():
        state = _tiles.SoftmaxState(m_ref[...], l_ref[...], acc_ref[...])
        o_ref[...] = _tiles.finish(state).astype(o_ref.dtype)


def _page_spec(i: int, pages_per_block: int, page_size: int, pages_per_seq: int, head_dim: int):
    def index_map(m, h, j, seq_ref, lo_ref, hi_ref, bt_ref):
        # lax.div (truncating) not //: floor division lowers to `sign`, which needs a real TPU.
        first = lax.div(lo_ref[m], page_size)  # the page of the tile's first visible key
        last = jnp.maximum(lax.div(hi_ref[m] + page_size - 1, page_size) - 1, first)
        page = jnp.minimum(first + j * pages_per_block + i, last)
        return h, bt_ref[seq_ref[m] * pages_per_seq + page], 0, 0

    return pl.BlockSpec((None, None, page_size, head_dim), index_map)


def ragged_paged_attention_tpu(
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
    sm_scale: float,
    block_q: int,
    pages_per_block: int,
    interpret: bool | pltpu.InterpretParams = False,
) -> Float[Array, "T N H"]:
    """Unvalidated TPU kernel call; inputs are checked by the public wrapper."""
    num_tokens, num_heads, head_dim = q.shape
    num_kv_heads, _, page_size, _ = k_pages.shape
    group = num_heads // num_kv_heads
    tiles = _tiles.plan_query_tiles(cu_q_lens, kv_lens, num_seqs, num_tokens, block_q)
    qt = _tiles.gather_query_tiles(q, tiles, num_kv_heads)  # [num_tiles, K, block_q * Q, H]
    num_tiles, _, num_rows, _ = qt.shape
    bounds = _tiles.key_bounds(tiles, kv_lens, group, key_start, key_end)
    pages_per_seq = block_tables.shape[1]
    tile_spec = pl.BlockSpec((None, None, num_rows, head_dim), lambda m, h, j, *_: (m, h, 0, 0))
    row_spec = pl.BlockSpec((None, num_rows, 1), lambda m, h, j, *_: (m, 0, 0))
    page_specs = [_page_spec(i, pages_per_block, page_size, pages_per_seq, head_dim) for i in range(pages_per_block)]
    grid_spec = pltpu.PrefetchScalarGridSpec(
        num_scalar_prefetch=4,
        grid=(num_tiles, num_kv_heads, pl.cdiv(pages_per_seq, pages_per_block)),
        in_specs=[row_spec, row_spec, tile_spec, *page_specs, *page_specs],
        out_specs=tile_spec,
        scratch_shapes=[
            pltpu.VMEM((num_rows, 1), jnp.float32),
            pltpu.VMEM((num_rows, 1), jnp.float32),
            pltpu.VMEM((num_rows, head_dim), jnp.float32),
        ],
    )
    kernel = functools.partial(_kernel, sm_scale=sm_scale, pages_per_block=pages_per_block)
    out = pl.pallas_call(
        kernel,
        grid_spec=grid_spec,
        out_shape=jax.ShapeDtypeStruct(qt.shape, q.dtype),
        compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel", "parallel", "arbitrary")),
        interpret=interpret,
        name="mmjax_ragged_paged_attention_tpu",
    )(tiles.seq, bounds.lo, bounds.hi, block_tables.reshape(-1), bounds.row_start[:, :, None],
      bounds.row_end[:, :, None], qt, *([k_pages] * pages_per_block), *([v_pages] * pages_per_block))
    return _tiles.scatter_output_tiles(out, tiles, num_tokens, num_heads)
