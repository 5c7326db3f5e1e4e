"""DeepStack inputs of the decoder: vision features added to the hidden states after its first layers.

Qwen3-VL's vision tower gives every placeholder token, besides its embedding,
``n`` more feature vectors (one per DeepStack merger); after decoder layer
``k < n`` each placeholder token's hidden state gets its ``k``-th feature added
(transformers' ``Qwen3VLTextModel._deepstack_process``). The decoder receives
the features as *rows* plus, per token, the row it reads: the dense forward's
rows are the request's items' in placeholder order, the engine's paged step
can hand it the rows of its embedding arena and ``embedding_slots``, with the
same decoder code.

Shape words: ``rows`` feature rows (a request's ``M`` placeholders, or an arena's
``U`` rows), ``layers`` the ``n`` decoder layers that get features.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from mmjax.types import Array, Float, Int


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class DeepStack:
    """What the decoder adds after its first ``num_layers`` layers.

    Attributes:
      rows: ``[R, rows, layers, D]`` feature rows: ``rows[r, i, k]`` is added after layer ``k``; ``R == 1``
        (rows shared by every sequence of the batch) or ``R == B`` (each sequence its own: the engine's replicas).
      index: ``[B, T]`` the row of each token (in its sequence's rows); ``-1``: none (a text token).
    """

    rows: Float[Array, "R rows layers D"]
    index: Int[Array, "B T"]

    @property
    def num_layers(self) -> int:
        """How many decoder layers get features (the first ones)."""
        return self.rows.shape[2]

    def add(self, hidden: Float[Array, "B T D"], layer: int) -> Float[Array, "B T D"]:
        """``hidden`` with layer ``layer``'s features added at the tokens that have a row."""
        features = gather_rows(self.rows[:, :, layer], self.index)
        return hidden + jnp.where((self.index >= 0)[..., None], features.astype(hidden.dtype), 0)


def gather_rows(rows: Float[Array, "R rows *feature"], index: Int[Array, "B T"]) -> Float[Array, "B T *feature"]:
    """``rows[r][index[b, t]]`` for each token (``r = 0`` when ``R == 1``, else ``r = b``); a ``-1`` index reads
    row 0 (mask it)."""
    if rows.shape[0] not in (1, index.shape[0]):
        raise ValueError(f"rows for {rows.shape[0]} sequences, an index for {index.shape[0]}")
    safe = jnp.maximum(index, 0)
    if rows.shape[0] == 1:
        return jnp.take(rows[0], safe, axis=0)
    return jax.vmap(lambda r, i: jnp.take(r, i, axis=0))(rows, safe)
