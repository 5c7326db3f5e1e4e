"""Qwen3-VL's placeholder rows: each placeholder token's embedding and DeepStack features in one row.

``Qwen3VLForConditionalGeneration.multimodal_embeddings`` returns one row per
placeholder token, ``[M, (1 + n) * D]``: the merged embedding, then the features
added after decoder layers ``0 .. n - 1`` (``n = len(deepstack_visual_indexes)``,
``Qwen3VLConfig.num_deepstack``), so ``row.reshape(1 + n, D)[0]`` is the token's
input embedding and ``row.reshape(1 + n, D)[1 + k]`` what layer ``k`` adds. One row
per token keeps the engine's embedding arena (rows of width ``(1 + n) * D``, gathered
by ``embedding_slots``) and a prefill chunk that ends inside an image working unchanged.

Shape words: ``rows`` a request's ``M`` placeholder rows or an arena's ``U``,
``row_width`` ``(1 + n) * D``.
"""

from __future__ import annotations

import jax.numpy as jnp

from mmjax.models.common.deepstack import DeepStack, gather_rows
from mmjax.types import Array, ArrayLike, Float, Int


def placeholder_rows(input_ids: Int[ArrayLike, "B T"], placeholder_ids: tuple[int, ...],
                     num_rows: int) -> Int[Array, "B T"]:
    """The row of each token whose id is one of ``placeholder_ids`` (the ``n``-th such token, row-major,
    reads row ``n``, clipped to ``num_rows - 1``), ``-1`` for every other token. ``jit``-safe."""
    is_mm = jnp.isin(input_ids, jnp.asarray(placeholder_ids))
    index = jnp.clip(jnp.cumsum(is_mm.reshape(-1)) - 1, 0, num_rows - 1).reshape(is_mm.shape)
    return jnp.where(is_mm, index, -1)


def merge_rows(
    embeds: Float[Array, "B T D"], rows: Float[Array, "R rows row_width"], index: Int[Array, "B T"]
) -> tuple[Float[Array, "B T D"], DeepStack]:
    """The token embeddings with each row's embedding at the tokens ``index`` names, and the rows' DeepStack.

    ``rows``: ``[R, rows, (1 + n) * D]``, ``R == 1`` (every sequence reads the same rows: the dense forward)
    or ``R == B`` (one arena per engine replica, ``index`` its ``embedding_slots``).
    """
    width = embeds.shape[-1]
    stacked = rows.reshape(*rows.shape[:2], rows.shape[-1] // width, width)  # R rows 1+n D
    merged = gather_rows(stacked[:, :, 0], index).astype(embeds.dtype)
    return jnp.where((index >= 0)[..., None], merged, embeds), DeepStack(rows=stacked[:, :, 1:], index=index)
