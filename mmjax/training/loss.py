"""The training loss: cross-entropy of the target tokens only, as transformers computes it."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from mmjax.training.examples import TrainBatch
from mmjax.types import Array, Float, Int


def target_loss(logits: Float[Array, "B T V"], labels: Int[Array, "B T"]) -> Float[Array, ""]:
    """Mean cross-entropy over the scored tokens: position ``t``'s logits predict ``labels[t + 1]``.

    The same as transformers' causal-LM loss with ``labels`` ``-100`` where ``labels`` is ``-1``
    (shifted by one, averaged over every scored token of the batch).
    """
    logits, targets = logits[:, :-1].astype(jnp.float32), labels[:, 1:]
    scored = targets >= 0
    logprobs = jax.nn.log_softmax(logits, axis=-1)
    picked = jnp.take_along_axis(logprobs, jnp.maximum(targets, 0)[..., None], axis=-1)[..., 0]
    return -jnp.sum(jnp.where(scored, picked, 0.0)) / jnp.maximum(jnp.sum(scored), 1)


def batch_loss(graphdef: nnx.GraphDef, state: nnx.State, batch: TrainBatch) -> Float[Array, ""]:
    """``target_loss`` of the model ``(graphdef, state)`` on ``batch``: a pure function of ``state``."""
    model: Any = nnx.merge(graphdef, state)
    logits = model(batch.input_ids, batch.positions, **batch.mm_kwargs)
    return target_loss(logits, batch.labels)
