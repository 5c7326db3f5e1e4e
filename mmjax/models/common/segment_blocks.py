"""Helpers shared by the blocked segment attentions: padding rows to whole blocks, a block pair's mask.

Shape letters: ``P`` packed rows (query and key rows alike), ``N`` heads, ``H``
head dimension; ``blocks`` row blocks, ``block`` rows of one block, ``q`` and
``k`` a block's query and key rows.
"""

from __future__ import annotations

import jax.numpy as jnp

from mmjax.types import Array, Bool, Float, Int

#: A masked score: the float32 minimum, not ``-inf``, so that ``m - m`` of a row that saw nothing yet is 0, not NaN.
MASKED = float(jnp.finfo(jnp.float32).min)
#: The smallest row sum a softmax divides by: a row that sees nothing keeps weights (and output) 0.
TINY = float(jnp.finfo(jnp.float32).tiny)


def pad_to_blocks(
    q: Float[Array, "P N H"], k: Float[Array, "P N H"], v: Float[Array, "P N H"],
    segments: Int[Array, "P"], valid: Bool[Array, "P"], block: int,
) -> tuple[Array, Array, Array, Array, Array]:
    """The inputs with padding rows (segment -1, not valid) appended up to a multiple of ``block`` rows.

    Buckets are multiples of the merge unit, not of a block (the last bucket of a ladder is the limit itself).
    """
    extra = -q.shape[0] % block
    if not extra:
        return q, k, v, segments, valid
    rows = lambda x, value=0: jnp.pad(x, [(0, extra)] + [(0, 0)] * (x.ndim - 1), constant_values=value)  # noqa: E731
    return rows(q), rows(k), rows(v), rows(segments, -1), rows(valid, False)


def pair_mask(
    q_segments: Int[Array, "*blocks q"], q_valid: Bool[Array, "*blocks q"],
    k_segments: Int[Array, "*blocks k"], k_valid: Bool[Array, "*blocks k"],
) -> Bool[Array, "*blocks q k"]:
    """``mask[..., q, k]``: query row ``q`` attends key row ``k`` (same segment, both real)."""
    same = q_segments[..., :, None] == k_segments[..., None, :]
    return same & q_valid[..., :, None] & k_valid[..., None, :]
