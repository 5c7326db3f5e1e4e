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

A layer with a sliding window passes it (``window=``); a query token never sees keys past its
``key_ends`` entry (``position + 1``, causal, unless it is inside a bidirectional span: the tokens
of one image in Gemma 3, which all see up to the span's end).
"""

from __future__ import annotations

from typing import Any, Protocol, TypeVar

import jax
import jax.numpy as jnp

from mmjax.attention.key_blocks import dense_key_block_attention
from mmjax.batch_invariant import batch_invariant
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
      window: this layer's sliding window (a query at position p sees keys after ``p - window``);
        None: the whole context.

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
        *,
        window: int | None = None,
    ) -> tuple[Float[Array, "B T N H"], Cache]: ...


def dense_attend(sliding_window: int | None = None, key_ends: Int[ArrayLike, "B T"] | None = None) -> Attend[None]:
    """The default ``Attend``: dense causal attention over the step's own tokens, no cache (inside
    ``mmjax.batch_invariant.batch_invariant_numerics()``, the key-block form of ``mmjax.attention.key_blocks``).

    ``sliding_window``: the window of a layer that passes none; ``key_ends``: see ``dense_causal_attention``.
    """

    def attend(q, k, v, positions, cache: Any = None, *, window: int | None = None):
        window = sliding_window if window is None else window
        if batch_invariant():  # each query in one fixed order, as the engine's paged attention in that mode
            return dense_key_block_attention(q, k, v, positions, key_ends=key_ends, sliding_window=window), cache
        return dense_causal_attention(q, k, v, positions, sliding_window=window, key_ends=key_ends), cache

    return attend


def bidirectional_key_ends(positions: Int[ArrayLike, "B T"], in_span: Any) -> Int[Array, "B T"]:
    """``key_ends`` for tokens of which ``in_span`` (bool ``[B, T]``) marks the bidirectional ones: a maximal
    run of marked tokens is one span, each of its tokens seeing up to the run's last position + 1; every other
    token ``position + 1`` (causal). Runs follow token order, as transformers' ``token_type_ids`` groups."""
    positions, in_span = jnp.asarray(positions), jnp.asarray(in_span)
    num_tokens = positions.shape[1]
    index = jnp.arange(num_tokens)
    # The first unmarked index at or after each token: its run's end.
    stops = jnp.where(in_span, num_tokens, index[None, :])
    run_end = jax.lax.cummin(stops, axis=1, reverse=True)
    last = jnp.take_along_axis(positions, jnp.maximum(run_end - 1, 0), axis=1)
    return jnp.where(in_span, last + 1, positions + 1).astype(jnp.int32)


@shape_checked
def dense_causal_attention(
    q: Float[Array, "B T N H"],
    k: Float[Array, "B S K H"],
    v: Float[Array, "B S K H"],
    positions: Int[ArrayLike, "B T"],
    *,
    kv_positions: Int[ArrayLike, "B S"] | None = None,
    sliding_window: int | None = None,
    key_ends: Int[ArrayLike, "B T"] | None = None,
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
      key_ends: one past the last key position each query sees (``bidirectional_key_ends``); None:
        ``positions + 1`` (causal). A window still cuts the keys before ``position - window + 1``.
    """
    kv_positions = positions if kv_positions is None else kv_positions
    num_q_heads, num_kv_heads, head_dim = q.shape[2], k.shape[2], q.shape[3]
    # The Q query heads of one KV head share it: N = K * Q, with no copy of k/v.
    q = q.reshape(*q.shape[:2], num_kv_heads, num_q_heads // num_kv_heads, head_dim)
    scores = jnp.einsum("BTKQH,BSKH->BKQTS", q, k, preferred_element_type=jnp.float32)
    scores = scores * (head_dim**-0.5)

    q_pos, kv_pos = positions[:, :, None], kv_positions[:, None, :]
    q_end = q_pos + 1 if key_ends is None else jnp.asarray(key_ends)[:, :, None]
    visible = (kv_pos < q_end) & (kv_pos >= 0)
    if sliding_window is not None:
        visible &= q_pos - kv_pos < sliding_window
    scores = jnp.where(visible[:, None, None], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)

    out = jnp.einsum("BKQTS,BSKH->BTKQH", probs, v)
    return out.reshape(*out.shape[:2], num_q_heads, head_dim)
