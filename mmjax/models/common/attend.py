"""The attention seam of the decoder, and its default: dense causal attention.

A decoder layer computes rotated ``q, k, v`` and hands them, with its own
cache, to an ``Attend`` function; it never looks at how keys and values are
stored. The cache goes in and comes out (as in gemma's and flax's attention):
each layer returns its output and its new cache, so the data flow is in the
signatures and a step returns the new pages it computed. The default attends
densely over this step's own tokens and has no cache (``None`` in, ``None``
out). The paged KV cache supplies another ``Attend``
(``mmjax.attention.PagedAttend``) whose cache is the layer's ``KVPages``; the
layer code does not change. A packed ragged batch is the ``B == 1`` case of
these shapes (or ``B == R``, one row per data replica).
"""

from __future__ import annotations

from typing import Any, Protocol, TypeVar

import jax
import jax.numpy as jnp

from mmjax.types import Array, ArrayLike, Float, Int, shape_checked


Cache = TypeVar("Cache")


class Attend(Protocol[Cache]):
    """``(q, k, v, positions, cache) -> (out, new cache)``: the decoder's attention computation.

    Args:
      q: ``Float[Array, "B T N H"]`` queries, already rotated and *not* scaled.
      k, v: ``Float[Array, "B T K H"]`` this step's keys (rotated) and values; ``N == K * Q``.
      positions: ``Int[Array, "B T"]`` absolute position of each query token; ``-1`` marks
        a padding token that must not be attended to.
      cache: this layer's cache (its ``KVPages`` for the paged cache; None for dense attention).

    Returns:
      ``(Float[Array, "B T N H"] in q's dtype, the layer's new cache)``.
    """

    def __call__(
        self,
        q: Float[Array, "B T N H"],
        k: Float[Array, "B T K H"],
        v: Float[Array, "B T K H"],
        positions: Int[Array, "B T"],
        cache: Cache,
    ) -> tuple[Float[Array, "B T N H"], Cache]: ...


def dense_attend(sliding_window: int | None = None) -> Attend[None]:
    """The default ``Attend``: dense causal attention over the step's own tokens, no cache."""

    def attend(q, k, v, positions, cache: Any = None):
        return dense_causal_attention(q, k, v, positions, sliding_window=sliding_window), cache

    return attend


@shape_checked
def dense_causal_attention(
    q: Float[Array, "B T N H"],
    k: Float[Array, "B S K H"],
    v: Float[Array, "B S K H"],
    positions: Int[ArrayLike, "B T"],
    *,
    kv_positions: Int[ArrayLike, "B S"] | None = None,
    sliding_window: int | None = None,
) -> Float[Array, "B T N H"]:
    """Grouped-query attention with a causal mask built from positions.

    Masking by positions (not by index) keeps it correct for left or right
    padding and for chunked prefill. The softmax runs in float32 as in
    transformers, whatever the input dtype.

    Args:
      positions: of the queries; a host or a device array (a model called eagerly passes on its caller's).
      kv_positions: positions of the keys; defaults to ``positions`` (S == T).
      sliding_window: if set, a query sees only the ``sliding_window`` most
        recent positions including its own (Mistral's convention).
    """
    kv_positions = positions if kv_positions is None else kv_positions
    num_q_heads, num_kv_heads, head_dim = q.shape[2], k.shape[2], q.shape[3]
    # The Q query heads of one KV head share it: N = K * Q, with no copy of k/v.
    q = q.reshape(*q.shape[:2], num_kv_heads, num_q_heads // num_kv_heads, head_dim)
    scores = jnp.einsum("BTKQH,BSKH->BKQTS", q, k, preferred_element_type=jnp.float32)
    scores = scores * (head_dim**-0.5)

    q_pos, kv_pos = positions[:, :, None], kv_positions[:, None, :]
    visible = (kv_pos <= q_pos) & (kv_pos >= 0)
    if sliding_window is not None:
        visible &= q_pos - kv_pos < sliding_window
    scores = jnp.where(visible[:, None, None], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)

    out = jnp.einsum("BKQTS,BSKH->BTKQH", probs, v)
    return out.reshape(*out.shape[:2], num_q_heads, head_dim)
