"""Ragged paged attention in plain XLA, tiled like the kernels: the fast CPU path for prefill.

``ragged_paged_attention_reference`` pads every sequence's queries to
``max_q_len``: simple, and right for decode (one query per sequence), but a
prefill step of a few long prompts in a fixed batch of B sequences pays
``B * max_q_len`` query rows. Here the packed tokens are cut into query tiles
of at most ``block_q`` tokens of one sequence (``_tiles.plan_query_tiles``, the
plan the Pallas kernels use), and each tile attends over its own sequence's
pages, so the work follows the real tokens. Same numerics: float32 softmax.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from mmjax.kernels_pallas import _tiles
from mmjax.types import Array, Float, Int, shape_checked

#: Query tokens per tile on CPU: big enough for efficient matmuls, small enough to bound padding.
DEFAULT_BLOCK_Q = 128


@functools.partial(jax.jit, static_argnames=("sm_scale", "block_q"))
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
    sm_scale: float | None = None,
    block_q: int = DEFAULT_BLOCK_Q,
) -> Float[Array, "T N H"]:
    """Attention of each packed query token over its sequence's pages (causal, GQA).

    Inputs as ``ragged_paged_attention_reference``; tokens of no sequence come out as zeros.
    In the einsums ``m`` is a query tile and ``r`` a row of one (``block_q * Q`` rows:
    token, then query head of the KV head's group).
    """
    num_tokens, num_heads, head_dim = q.shape
    num_kv_heads, _, page_size, _ = k_pages.shape
    group = num_heads // num_kv_heads
    scale = 1.0 / math.sqrt(head_dim) if sm_scale is None else sm_scale
    block_q = min(block_q, num_tokens)
    tiles = _tiles.plan_query_tiles(cu_q_lens, kv_lens, num_seqs, num_tokens, block_q)
    qt = _tiles.gather_query_tiles(q, tiles, num_kv_heads).astype(jnp.float32)  # [m, K, r, H]

    def gather(pages: Array) -> Array:  # [K, A, G, H] -> [m, K, S, H] for each tile's sequence
        x = pages[:, block_tables[tiles.seq]]  # [K, m, W, G, H]
        return x.reshape(num_kv_heads, x.shape[1], -1, head_dim).transpose(1, 0, 2, 3).astype(jnp.float32)

    k, v = gather(k_pages), gather(v_pages)
    num_keys = k.shape[2]
    visible = jax.vmap(lambda pos0, rows: _tiles.visible(block_q * group, num_keys, 0, pos0, rows, group))(
        tiles.pos0, tiles.rows)  # [m, r, S]; keys past the sequence are never visible (causal)
    logits = jnp.einsum("mKrH,mKSH->mKrS", qt, k) * scale
    logits = jnp.where(visible[:, None], logits, _tiles.MASK_VALUE)
    probs = jnp.exp(logits - jnp.max(logits, axis=-1, keepdims=True))
    probs = jnp.where(visible[:, None], probs, 0.0)
    probs = probs / jnp.maximum(jnp.sum(probs, axis=-1, keepdims=True), jnp.finfo(jnp.float32).tiny)
    # Slots past a sequence may hold stale or NaN values: zero them so 0 * NaN cannot leak.
    in_sequence = jnp.arange(num_keys) < kv_lens[tiles.seq][:, None]  # [m, S]
    v = jnp.where(in_sequence[:, None, :, None], v, 0.0)
    out = jnp.einsum("mKrS,mKSH->mKrH", probs, v).astype(q.dtype)
    return _tiles.scatter_output_tiles(out, tiles, num_tokens, num_heads)

