"""Ragged paged attention for GPU: Pallas with the Triton lowering.

Why Triton and not Mosaic GPU: the Triton lowering runs on every CUDA GPU
jaxlib supports (Ampere, Hopper, Blackwell) and under ``interpret=True`` on CPU,
so the same kernel is tested here; Mosaic GPU targets Hopper+ warpgroup code
and cannot be interpreted. Triton wants power-of-two block shapes, so rows and
the head dim are padded to powers of two (80 -> 128) in the wrapper for Q, and
K/V pages are read with masked gathers (no copy of the cache is padded).

Grid: (query tile, KV head). Each program walks the blocks of ``pages_per_block`` pages that meet
the keys its tile sees (``_tiles.key_bounds``: ``[lo, hi)``, from a sliding window's start to the
last visible key), with an online softmax in float32; blocks before a window are never loaded.
Each row's own ``[start, end)`` comes in as a block of the tile's rows.
Public entry point: `mmjax.kernels_pallas.ragged_paged_attention(backend="gpu")`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from mmjax.kernels_pallas import _tiles
from mmjax.types import Array, Float, Int

DEFAULT_ROWS = 64  # block_q * Q: keeps the float32 accumulator in registers
DEFAULT_BLOCK_K = 64  # keys per step, i.e. pages_per_block * page size


def default_block_sizes(group: int, page_size: int) -> tuple[int, int]:
    """(block_q, pages_per_block) for the GPU kernel: powers of two, as Triton needs.

    GQA groups need not be powers of two (e.g. 5, or 7 for LLaVA-NeXT-34B), so
    block_q is rounded *down* to one.
    """
    def floor_pow2(n: int) -> int:
        return 1 << (max(1, n).bit_length() - 1)

    return floor_pow2(DEFAULT_ROWS // group), floor_pow2(DEFAULT_BLOCK_K // page_size)


def _kernel(
    seq_ref, lo_ref, hi_ref, bt_ref, row_start_ref, row_end_ref, q_ref, k_ref, v_ref, o_ref, *,
    sm_scale: float, head_dim: int, pages_per_block: int,
):
    m = pl.program_id(0)
    seq, lo, hi = seq_ref[m], lo_ref[m], hi_ref[m]
    num_rows, padded_dim = q_ref.shape
    page_size = k_ref.shape[1]
    block_k = pages_per_block * page_size
    first_page = lax.div(lo, page_size)  # blocks start at the page of the tile's first key
    row_start, row_end = row_start_ref[...][:, None], row_end_ref[...][:, None]
    q = q_ref[...]
    shape = (pages_per_block, page_size, padded_dim)
    local_page = lax.broadcasted_iota(jnp.int32, shape, 0)
    offset = lax.broadcasted_iota(jnp.int32, shape, 1)
    col = lax.broadcasted_iota(jnp.int32, shape, 2)

    def body(j, state):
        page0 = first_page + j * pages_per_block
        pages = bt_ref[seq, pl.ds(page0, pages_per_block)]
        page = jnp.broadcast_to(pages[:, None, None], shape)
        key0 = page0 * page_size
        key = key0 + local_page * page_size + offset
        # Masked loads: no key at or past hi (slots past the sequence may be stale or NaN), no pad columns.
        load_mask = (col < head_dim) & (key < hi)
        k = plgpu.load(k_ref.at[page, offset, col], mask=load_mask, other=0.0)
        v = plgpu.load(v_ref.at[page, offset, col], mask=load_mask, other=0.0)
        mask = _tiles.visible(block_k, key0, row_start, row_end)
        return _tiles.attend_block(
            state, q, k.reshape(block_k, padded_dim), v.reshape(block_k, padded_dim), mask, sm_scale)

    # Only the blocks that meet [lo, hi): from the window's first page to the last visible key.
    init = _tiles.init_softmax_state(num_rows, padded_dim)
    state = lax.fori_loop(0, pl.cdiv(hi - first_page * page_size, block_k), body, init)
    o_ref[...] = _tiles.finish(state).astype(o_ref.dtype)


def ragged_paged_attention_gpu(
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
    num_warps: int = 4,
    num_stages: int = 2,
    interpret: bool = False,
) -> Float[Array, "T N H"]:
    """Unvalidated GPU kernel call; inputs are checked by the public wrapper."""
    num_tokens, num_heads, head_dim = q.shape
    num_kv_heads, _, page_size, _ = k_pages.shape
    group = num_heads // num_kv_heads
    if block_q & (block_q - 1) or pages_per_block & (pages_per_block - 1) or page_size & (page_size - 1):
        raise ValueError(
            f"GPU kernel needs powers of two: block_q={block_q}, pages_per_block={pages_per_block}, "
            f"page_size={page_size}")
    tiles = _tiles.plan_query_tiles(cu_q_lens, kv_lens, num_seqs, num_tokens, block_q)
    qt = _tiles.gather_query_tiles(q, tiles, num_kv_heads)  # [num_tiles, K, block_q * Q, H]
    bounds = _tiles.key_bounds(tiles, kv_lens, group, key_start, key_end)
    num_rows = max(16, pl.next_power_of_2(block_q * group))  # tensor-core minimum is 16 rows
    padded_dim = max(16, pl.next_power_of_2(head_dim))
    qt = jnp.pad(qt, ((0, 0), (0, 0), (0, num_rows - qt.shape[2]), (0, padded_dim - head_dim)))
    pad_rows = ((0, 0), (0, num_rows - block_q * group))  # pad rows see no key: [0, 0)
    row_start, row_end = jnp.pad(bounds.row_start, pad_rows), jnp.pad(bounds.row_end, pad_rows)
    # A block from any page of the table is whole; the pad pages are never read (masked by hi).
    block_tables = jnp.pad(block_tables, ((0, 0), (0, pages_per_block)))
    num_tiles = qt.shape[0]
    whole = pl.BlockSpec()  # the full array: scalars read by index
    row_spec = pl.BlockSpec((None, num_rows), lambda m, h: (m, 0))
    tile_spec = pl.BlockSpec((None, None, num_rows, padded_dim), lambda m, h: (m, h, 0, 0))
    page_spec = pl.BlockSpec((None, *k_pages.shape[1:]), lambda m, h: (h, 0, 0, 0))
    kernel = functools.partial(_kernel, sm_scale=sm_scale, head_dim=head_dim, pages_per_block=pages_per_block)
    out = pl.pallas_call(
        kernel,
        grid=(num_tiles, num_kv_heads),
        in_specs=[whole, whole, whole, whole, row_spec, row_spec, tile_spec, page_spec, page_spec],
        out_specs=tile_spec,
        out_shape=jax.ShapeDtypeStruct(qt.shape, q.dtype),
        compiler_params=plgpu.CompilerParams(num_warps=num_warps, num_stages=num_stages),
        interpret=interpret,
        name="mmjax_ragged_paged_attention_gpu",
    )(tiles.seq, bounds.lo, bounds.hi, block_tables, row_start, row_end, qt, k_pages, v_pages)
    out = out[:, :, : block_q * group, :head_dim]
    return _tiles.scatter_output_tiles(out, tiles, num_tokens, num_heads)
