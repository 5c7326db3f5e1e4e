"""Ragged paged attention for GPU: Pallas with the Triton lowering.

Why Triton and not Mosaic GPU: the Triton lowering runs on every CUDA GPU
jaxlib supports (Ampere, Hopper, Blackwell) and under ``interpret=True`` on CPU,
so the same kernel is tested here; Mosaic GPU targets Hopper+ warpgroup code
and cannot be interpreted. Triton wants power-of-two block shapes, so rows and
the head dim are padded to powers of two (80 -> 128) in the wrapper for Q, and
K/V pages are read with masked gathers (no copy of the cache is padded).

Grid: (query tile, KV head). Each program walks the pages its tile can see
(causally), ``pages_per_block`` pages per step, with an online softmax in float32.
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
    seq_ref, pos0_ref, rows_ref, bt_ref, q_ref, k_ref, v_ref, o_ref, *,
    sm_scale: float, group: int, head_dim: int, pages_per_block: int,
):
    m = pl.program_id(0)
    seq, pos0, rows = seq_ref[m], pos0_ref[m], rows_ref[m]
    num_rows, padded_dim = q_ref.shape
    page_size = k_ref.shape[1]
    block_k = pages_per_block * page_size
    kv_end = pos0 + rows
    q = q_ref[...]
    shape = (pages_per_block, page_size, padded_dim)
    local_page = lax.broadcasted_iota(jnp.int32, shape, 0)
    offset = lax.broadcasted_iota(jnp.int32, shape, 1)
    col = lax.broadcasted_iota(jnp.int32, shape, 2)

    def body(j, state):
        pages = bt_ref[seq, pl.ds(j * pages_per_block, pages_per_block)]
        page = jnp.broadcast_to(pages[:, None, None], shape)
        key = j * block_k + local_page * page_size + offset
        # Masked loads: never touch slots past the sequence (stale or NaN) or pad columns.
        load_mask = (col < head_dim) & (key < kv_end)
        k = plgpu.load(k_ref.at[page, offset, col], mask=load_mask, other=0.0)
        v = plgpu.load(v_ref.at[page, offset, col], mask=load_mask, other=0.0)
        mask = _tiles.visible(num_rows, block_k, j * block_k, pos0, rows, group)
        return _tiles.attend_block(
            state, q, k.reshape(block_k, padded_dim), v.reshape(block_k, padded_dim), mask, sm_scale)

    state = lax.fori_loop(0, pl.cdiv(kv_end, block_k), body, _tiles.init_softmax_state(num_rows, padded_dim))
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
    num_rows = max(16, pl.next_power_of_2(block_q * group))  # tensor-core minimum is 16 rows
    padded_dim = max(16, pl.next_power_of_2(head_dim))
    qt = jnp.pad(qt, ((0, 0), (0, 0), (0, num_rows - qt.shape[2]), (0, padded_dim - head_dim)))
    pad_pages = -block_tables.shape[1] % pages_per_block
    block_tables = jnp.pad(block_tables, ((0, 0), (0, pad_pages)))  # never read: masked by kv_end
    num_tiles = qt.shape[0]
    whole = pl.BlockSpec()  # the full array: scalars read by index
    tile_spec = pl.BlockSpec((None, None, num_rows, padded_dim), lambda m, h: (m, h, 0, 0))
    page_spec = pl.BlockSpec((None, *k_pages.shape[1:]), lambda m, h: (h, 0, 0, 0))
    kernel = functools.partial(
        _kernel, sm_scale=sm_scale, group=group, head_dim=head_dim, pages_per_block=pages_per_block)
    out = pl.pallas_call(
        kernel,
        grid=(num_tiles, num_kv_heads),
        in_specs=[whole, whole, whole, whole, tile_spec, page_spec, page_spec],
        out_specs=tile_spec,
        out_shape=jax.ShapeDtypeStruct(qt.shape, q.dtype),
        compiler_params=plgpu.CompilerParams(num_warps=num_warps, num_stages=num_stages),
        interpret=interpret,
        name="mmjax_ragged_paged_attention_gpu",
    )(tiles.seq, tiles.pos0, tiles.rows, block_tables, qt, k_pages, v_pages)
    out = out[:, :, : block_q * group, :head_dim]
    return _tiles.scatter_output_tiles(out, tiles, num_tokens, num_heads)
