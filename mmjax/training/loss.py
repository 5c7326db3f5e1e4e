"""The training loss: cross-entropy of the target tokens only, as transformers computes it."""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from mmjax.batch_invariant import batch_invariant, fixed_order_log_softmax
from mmjax.models.common.attend import bidirectional_key_ends, dense_attend
from mmjax.training.examples import TrainBatch
from mmjax.types import Array, Float, Int


def target_loss(logits: Float[Array, "B T V"], labels: Int[Array, "B T"]) -> Float[Array, ""]:
    """Mean cross-entropy over the scored tokens: position ``t``'s logits predict ``labels[t + 1]``.

    The same as transformers' causal-LM loss with ``labels`` ``-100`` where ``labels`` is ``-1``
    (shifted by one, averaged over every scored token of the batch).
    """
    scored = labels[:, 1:] >= 0
    return -jnp.sum(token_logprobs(logits, labels)) / jnp.maximum(jnp.sum(scored), 1)


def token_logprobs(logits: Float[Array, "B T V"], labels: Int[Array, "B T"]) -> Float[Array, "B T-1"]:
    """float32 log-probability of ``labels[:, t + 1]`` under position ``t``'s logits (a log-softmax over the
    vocabulary, as the engine's prompt logprobs), 0 where ``labels[:, t + 1]`` is not scored (``-1``)."""
    targets = labels[:, 1:]
    log_softmax = fixed_order_log_softmax if batch_invariant() else functools.partial(jax.nn.log_softmax, axis=-1)
    logprobs = log_softmax(logits[:, :-1].astype(jnp.float32))
    picked = jnp.take_along_axis(logprobs, jnp.maximum(targets, 0)[..., None], axis=-1)[..., 0]
    return jnp.where(targets >= 0, picked, 0.0)


def batch_logits(model: Any, batch: TrainBatch, rows: Float[Array, "B U W"] | None = None) -> Float[Array, "B T V"]:
    """The model's float32 logits on ``batch`` through the engine's model interface (``EngineModel``), with
    dense causal attention (a model's image tokens bidirectional where it says so: ``bidirectional_token_id``,
    Gemma 3): each example's items encoded (``multimodal_embeddings``), its rows put in at its
    placeholders (``merge_embeddings``), the decoder turned by the batch's rotary positions. ``rows``: each
    example's placeholder rows already encoded (``example_rows``' layout), e.g. by the engine's encoder program."""
    embeds, extras = model.embed_text(batch.input_ids), {}
    if rows is not None or any(batch.example_mm_kwargs):
        rows = example_rows(model, batch.example_mm_kwargs) if rows is None else rows
        embeds, extras = model.merge_embeddings(embeds, rows, batch.embedding_slots)
    attend, token = None, getattr(model, "bidirectional_token_id", None)
    if token is not None:
        attend = dense_attend(key_ends=bidirectional_key_ends(batch.positions, batch.input_ids == token))
    hidden, _ = model.decoder_hidden_states(embeds, batch.positions, attend, None, batch.rope_positions, **extras)
    return model.logits(hidden)


def example_rows(model: Any, example_kwargs: tuple[dict[str, Array], ...]) -> Float[Array, "B U W"]:
    """Each example's placeholder rows ``[B, U, W]`` (zeros past its own, and for an example without items).

    Examples whose inputs have the same shapes share one encoder call (``vmap``); shapes are known
    while tracing, so the grouping costs nothing at run time. In batch-invariant numerics
    (``mmjax.batch_invariant``) each example is encoded alone, as the engine encodes a request's items.
    """
    groups: dict[tuple, list[int]] = {}
    for b, kwargs in enumerate(example_kwargs):
        if kwargs:
            signature = tuple(sorted((k, tuple(v.shape), str(v.dtype)) for k, v in kwargs.items()))
            signature += ((b,),) if batch_invariant() else ()
            groups.setdefault(signature, []).append(b)
    encoded: dict[int, Array] = {}
    for members in groups.values():
        if len(members) == 1:  # alone: the engine's encoder call, no batch axis
            rows = model.multimodal_embeddings(**example_kwargs[members[0]])[None]
        else:
            stacked = {k: jnp.stack([example_kwargs[b][k] for b in members]) for k in example_kwargs[members[0]]}
            rows = jax.vmap(lambda kwargs: model.multimodal_embeddings(**kwargs))(stacked)
        encoded.update({b: rows[i] for i, b in enumerate(members)})
    num_rows = max(r.shape[0] for r in encoded.values())
    width, dtype = next(iter(encoded.values())).shape[1], next(iter(encoded.values())).dtype
    padded = [jnp.pad(encoded[b], ((0, num_rows - encoded[b].shape[0]), (0, 0))) if b in encoded
              else jnp.zeros((num_rows, width), dtype) for b in range(len(example_kwargs))]
    return jnp.stack(padded)


def batch_token_logprobs(graphdef: nnx.GraphDef, state: nnx.State, batch: TrainBatch,
                         rows: Float[Array, "B U W"] | None = None) -> Float[Array, "B T-1"]:
    """``token_logprobs`` of the model ``(graphdef, state)`` on ``batch``: a pure function of ``state``
    (``mmjax.score`` traces it in batch-invariant numerics; a policy-gradient loss weighs it). ``rows``: the
    examples' placeholder rows already encoded (``batch_logits``)."""
    model: Any = nnx.merge(graphdef, state)
    return token_logprobs(batch_logits(model, batch, rows), batch.labels)


def batch_loss(graphdef: nnx.GraphDef, state: nnx.State, batch: TrainBatch) -> Float[Array, ""]:
    """``target_loss`` of the model ``(graphdef, state)`` on ``batch``: a pure function of ``state``."""
    model: Any = nnx.merge(graphdef, state)
    return target_loss(batch_logits(model, batch), batch.labels)
