"""Qwen3-VL's placeholder rows: each placeholder token's embedding and DeepStack features in one row.

``Qwen3VLForConditionalGeneration.multimodal_embeddings`` returns one row per
placeholder token, ``[M, (1 + n) * D]``: the merged embedding, then the features
added after decoder layers ``0 .. n - 1`` (``n = len(deepstack_visual_indexes)``,
``Qwen3VLConfig.num_deepstack``), so ``row.reshape(1 + n, D)[0]`` is the token's
input embedding and ``row.reshape(1 + n, D)[1 + k]`` what layer ``k`` adds. One row
per token keeps the engine's embedding arena (rows of width ``(1 + n) * D``, gathered
by ``embedding_slots``) and a prefill chunk that ends inside an image working unchanged.

A video's rows cover its whole placeholder range (``video_hooks``): the row of a timestamp or vision
start/end token inside it is that token's own embedding with zero DeepStack features
(``with_text_rows``), so the engine's one row per placeholder token holds for videos too.

Shape words: ``rows`` a request's ``M`` placeholder rows or an arena's ``U``,
``row_width`` ``(1 + n) * D``.
"""

from __future__ import annotations

import jax.numpy as jnp

from mmjax.models.common.deepstack import DeepStack, gather_rows
from mmjax.models.common.placeholders import modality_major_rows
from mmjax.types import Array, ArrayLike, Float, Int

#: ``video_text_ids`` entries besides token ids: a row that takes the tower's next merged frame row, and a row
#: past the videos' runs (zeros).
FRAME_ROW, PADDING_ROW = -1, -2


def placeholder_rows(input_ids: Int[ArrayLike, "B T"], placeholder_ids: tuple[int, ...],
                     num_rows: int) -> Int[Array, "B T"]:
    """The row of each token whose id is one of ``placeholder_ids``, modality by modality: the tokens of
    ``placeholder_ids[0]`` (row-major) read the first rows, those of ``placeholder_ids[1]`` the rows after them
    (``modality_major_rows``), clipped to ``num_rows - 1``; ``-1`` for every other token. ``jit``-safe."""
    rows = modality_major_rows(input_ids, placeholder_ids)
    return jnp.where(rows >= 0, jnp.minimum(rows, num_rows - 1), -1)


def with_text_rows(frame_rows: Float[Array, "merged row_width"], text_ids: Int[Array, "S"],
                   text_embeds: Float[Array, "S D"]) -> Float[Array, "S row_width"]:
    """A video run's rows: ``text_ids[s] == FRAME_ROW`` takes the next of ``frame_rows``, a token id its
    ``text_embeds[s]`` with zero DeepStack features, ``PADDING_ROW`` zeros (``video_hooks.text_row_ids``)."""
    is_frame = text_ids == FRAME_ROW
    frame = jnp.take(frame_rows, jnp.clip(jnp.cumsum(is_frame) - 1, 0, frame_rows.shape[0] - 1), axis=0)
    width = frame_rows.shape[-1] - text_embeds.shape[-1]
    text = jnp.concatenate([text_embeds.astype(frame_rows.dtype), jnp.zeros((len(text_ids), width), frame_rows.dtype)],
                           axis=-1)
    return jnp.where(is_frame[:, None], frame, jnp.where((text_ids >= 0)[:, None], text, 0))


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
