"""``mmjax.score``: the logprob of every scored token of training examples, through the training path.

The examples are collated as ``mmjax.train`` collates them and run through the loss's forward pass
(``batch_token_logprobs``), traced in batch-invariant numerics (``mmjax.batch_invariant``), each example's
items encoded alone by the engine's batch-invariant encoder program (``encode_batch_invariant``): each token's
logprob is the same whichever examples are scored with it, and equal, bit for bit, to the prompt
logprobs of an engine built with ``EngineConfig(batch_invariant=True)`` for the same tokens.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mmjax.batch_invariant import batch_invariant_numerics
from mmjax.engine.loaded_model import LoadedModel
from mmjax.engine.request import encoder_items
from mmjax.engine.step import encode_batch_invariant
from mmjax.training.examples import TrainBatch, TrainExample, collate
from mmjax.training.loss import batch_token_logprobs


@functools.partial(jax.jit, static_argnums=0)
def _invariant_logprobs(graphdef: nnx.GraphDef, state: nnx.State, batch: TrainBatch,
                        rows: jax.Array | None) -> jax.Array:
    with batch_invariant_numerics():  # read while tracing: every trace of this function is batch-invariant
        return batch_token_logprobs(graphdef, state, batch, rows)


def encoded_rows(llm: LoadedModel, examples: Sequence[TrainExample], batch: TrainBatch) -> jax.Array | None:
    """Each example's placeholder rows ``[B, U, W]`` (zeros past an example's own; None without items): each of
    its items encoded alone (``encoder_items``) by ``encode_batch_invariant``, as an engine with
    ``batch_invariant=True`` encodes them."""
    if not any(batch.example_mm_kwargs):
        return None
    encoded = {}
    for b, example in enumerate(examples):
        items = encoder_items(llm.process(example.prompt))  # the processor cache has them from collate
        if items:
            encoded[b] = jnp.concatenate([encode_batch_invariant(llm.graphdef, llm.state, dict(item.inputs))
                                          [:item.num_rows] for item in items])
    count = max(rows.shape[0] for rows in encoded.values())
    first = next(iter(encoded.values()))
    return jnp.stack([jnp.pad(encoded[b], ((0, count - encoded[b].shape[0]), (0, 0))) if b in encoded
                      else jnp.zeros((count, first.shape[1]), first.dtype)
                      for b in range(len(batch.example_mm_kwargs))])


def score(llm: LoadedModel, examples: Iterable[TrainExample], *, batch_size: int = 8,
          length_bucket: int = 64) -> list[np.ndarray]:
    """The logprob of each scored token of each example, by the trainer's forward pass.

    Args:
      llm: a loaded model (``mmjax.load``; on one device).
      examples: ``TrainExample``s, as ``mmjax.train`` takes them.
      batch_size: examples per forward pass; the results do not depend on it.
      length_bucket: sequences are padded to a multiple of this (one compiled program per bucket).

    Returns:
      one float32 array per example, in order: the logprob of each of its target's tokens and its end of
      sequence, then each follow-up target's (its text is not scored). ``-mean`` of an example's array is
      ``mmjax.train``'s loss on that example alone (up to the order of float32 sums: the trainer's own
      products may run faster than these). The same bits whichever examples share a batch, and the same
      as ``generate``'s ``prompt_logprobs`` for these tokens with ``EngineConfig(batch_invariant=True)``.

    Raises:
      ValueError / TypeError: a bad argument or example (named by index), before any work; a model
        sharded over a mesh.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    if getattr(llm, "mesh", None) is not None:
        raise ValueError("mmjax.score runs on one device: this model is sharded over a mesh (load it without mesh=)")
    examples = list(examples)
    for i, example in enumerate(examples):
        if not isinstance(example, TrainExample):
            raise TypeError(f"example {i} must be a TrainExample(prompt, target), got {type(example).__name__}")
    batches = [collate(llm, chunk, batch_size=batch_size, length_bucket=length_bucket)
               for chunk in _chunks(examples, batch_size)]  # every example checked before the first forward pass
    scores: list[np.ndarray] = []
    for chunk, batch in zip(_chunks(examples, batch_size), batches):
        rows = encoded_rows(llm, chunk, batch)
        logprobs = np.asarray(_invariant_logprobs(llm.graphdef, llm.state, batch, rows))
        scored = np.asarray(batch.labels)[:, 1:] >= 0
        scores += [logprobs[b][scored[b]].astype(np.float32) for b in range(len(chunk))]
    return scores


def _chunks(examples: Sequence[TrainExample], size: int) -> list[Sequence[TrainExample]]:
    return [examples[i:i + size] for i in range(0, len(examples), size)]
