"""``mmjax.train``: fine-tune a loaded model with optax, from the same pure functions inference uses.

One jitted step: the loss of a batch (``loss.batch_loss``), its gradient with respect to
the trained leaves only, and an optax update. On a mesh with a "data" axis the batch is
split over it and XLA sums the gradients across replicas; the weights stay where the
loader placed them.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import itertools
import random
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from mmjax.models.architectures import family_of
from mmjax.models.common.family import model_quantization
from mmjax.training.examples import TrainBatch, TrainExample, collate
from mmjax.training.lora import (
    LoraConfig, adapted_leaves, apply_adapters, init_adapters, merge_adapters, scale_leaves,
)
from mmjax.training.loss import batch_loss
from mmjax.training.params import ParamSplit
from mmjax.engine.loaded_model import LoadedModel


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """What ``train`` returns.

    Attributes:
      llm: a new handle on the trained model (LoRA adapters merged); the input ``llm`` is unchanged.
      losses: the loss of every step, in order.
      seconds: wall time of the training loop (compilation included).
    """

    llm: LoadedModel
    losses: list[float]
    seconds: float


def objective(graphdef: Any, split: ParamSplit, lora_scale: float | None) -> Callable[..., jax.Array]:
    """``loss(params, frozen, batch)``: ``params`` the trained leaves (or the LoRA adapters, with
    ``lora_scale``), ``frozen`` the others (every leaf, with LoRA)."""
    def loss(params: Any, frozen: Sequence[Any], batch: TrainBatch) -> jax.Array:
        if lora_scale is None:
            leaves = split.merge(params, frozen)
        else:
            scales = scale_leaves(split, list(params))
            leaves = jax.tree.unflatten(split.treedef, apply_adapters(frozen, params, lora_scale, scales))
        return batch_loss(graphdef, leaves, batch)

    return loss


def make_train_step(loss: Callable[..., jax.Array], optimizer: optax.GradientTransformation) -> Callable[..., Any]:
    """``step(params, opt_state, frozen, batch) -> (params, opt_state, loss)``, jitted; params donated."""
    def step(params, opt_state, frozen, batch):
        value, grads = jax.value_and_grad(loss)(params, frozen, batch)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value

    return jax.jit(step, donate_argnums=(0, 1))


def train(
    llm: LoadedModel,
    examples: Iterable[TrainExample],
    *,
    steps: int | None = None,
    batch_size: int = 8,
    optimizer: optax.GradientTransformation | None = None,
    trainable: str = "projector",
    lora: LoraConfig | None = None,
    seed: int = 0,
    shuffle: bool = True,
    use_tqdm: bool = True,
    length_bucket: int = 64,
) -> TrainResult:
    """Fine-tune ``llm`` on ``examples`` (``TrainExample(prompt, target)``); only target tokens are scored.

    Args:
      examples: a sequence (reshuffled every pass when ``shuffle``, cycled until ``steps``) or any
        iterable (read once, in order).
      steps: optimizer steps; default one pass over ``examples``.
      optimizer: an optax transformation; default ``optax.adamw(1e-3)``.
      trainable: "projector" (the multimodal projector; the default), "lora" (adapters on the
        decoder's projections, ``lora`` configures them), or "all".
      seed: the shuffling and the adapters' initialisation.

    Raises:
      ValueError / TypeError: bad arguments or a bad example (named by index), before any step; "all" on a
        model whose projections are int8 (``quantization="int8"``; "lora" trains float adapters over them).
    """
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise ValueError(f"steps must be an int >= 1 or None, got {steps!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    if lora is not None and trainable != "lora":
        raise ValueError(f"a LoraConfig was given but trainable={trainable!r}; pass trainable='lora'")
    family = family_of(llm.model)
    if trainable == "all" and model_quantization(llm.model) is not None:
        raise ValueError(
            "trainable='all' needs float projections, but this model's are int8 (loaded with "
            "quantization='int8'): train LoRA adapters over them (trainable='lora'), or train the float "
            "checkpoint and quantize the saved result (mmjax.load(saved, quantization='int8'))"
        )
    split = ParamSplit.build(llm.state, trainable, family.trainable_groups)
    optimizer = optax.adamw(1e-3) if optimizer is None else optimizer
    leaves = jax.tree.leaves(llm.state)
    if trainable == "lora":
        lora = lora or LoraConfig()
        adapted = adapted_leaves(split, lora, family.lora_prefix)
        params, frozen = init_adapters(leaves, adapted, lora, jax.random.key(seed)), leaves
        scale = lora.scale
    else:
        params, frozen = split.split(llm.state)
        params, scale = [jnp.array(x, copy=True) for x in params], None  # donated: keep llm's own
    step = make_train_step(objective(llm.graphdef, split, scale), optimizer)
    opt_state = optimizer.init(params)
    chunks = _batches(examples, batch_size, steps, shuffle, seed)
    losses, start = [], time.perf_counter()
    bar = tqdm(total=steps, desc="train", disable=not use_tqdm, unit="step")
    for batch in _collated(llm, chunks, batch_size, length_bucket):
        params, opt_state, loss = step(params, opt_state, frozen, _place(batch, llm.mesh))
        losses.append(float(loss))
        bar.update(1)
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
    bar.close()
    if not losses:
        raise ValueError("no training example was given")
    if trainable == "lora":
        new_leaves = merge_adapters(leaves, params, scale, scale_leaves(split, list(params)))
    else:
        new_leaves = jax.tree.leaves(split.merge(params, frozen))
    state = jax.tree.unflatten(split.treedef, new_leaves)
    trained = dataclasses.replace(llm, state=state, _engine=[], _mappers={})
    return TrainResult(trained, losses, time.perf_counter() - start)


def _batches(examples: Iterable[TrainExample], batch_size: int, steps: int | None, shuffle: bool,
             seed: int) -> Iterator[list[TrainExample]]:
    """Lists of ``batch_size`` examples (the last of a finite pass may be shorter), ``steps`` of them."""
    if isinstance(examples, Sequence):
        if not examples:
            return
        rng = random.Random(seed)

        def passes() -> Iterator[TrainExample]:
            while True:
                order = list(range(len(examples)))
                if shuffle:
                    rng.shuffle(order)
                yield from (examples[i] for i in order)
                if steps is None:
                    return
        stream = passes()
    else:
        stream = iter(examples)
    count = 0
    while steps is None or count < steps:
        chunk = list(itertools.islice(stream, batch_size))
        if not chunk:
            return
        yield chunk
        count += 1


def _collated(llm: LoadedModel, chunks: Iterable[list[TrainExample]], batch_size: int, length_bucket: int,
              ahead: int = 2) -> Iterator[TrainBatch]:
    """``collate`` of each chunk, on a worker thread up to ``ahead`` batches before the step that
    takes it, so that image processing overlaps the device's work (a bad example raises here)."""
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="mmjax-collate") as pool:
        pending: collections.deque = collections.deque()
        for chunk in chunks:
            pending.append(pool.submit(collate, llm, chunk, batch_size=batch_size, length_bucket=length_bucket))
            if len(pending) > ahead:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _place(batch: TrainBatch, mesh: Any) -> TrainBatch:
    """On a mesh, the token arrays split over "data" (when it divides the batch); else as they are."""
    if mesh is None or "data" not in mesh.axis_names:
        return batch
    from jax.sharding import NamedSharding, PartitionSpec

    data = mesh.shape["data"]
    rows = NamedSharding(mesh, PartitionSpec("data") if batch.input_ids.shape[0] % data == 0 else PartitionSpec())
    whole = NamedSharding(mesh, PartitionSpec())
    put = lambda x, s: jax.device_put(np.asarray(x), s)  # noqa: E731
    kwargs = tuple({k: put(v, whole) for k, v in example.items()} for example in batch.example_mm_kwargs)
    rope = None if batch.rope_positions is None else put(batch.rope_positions, rows)
    return TrainBatch(put(batch.input_ids, rows), put(batch.positions, rows), put(batch.labels, rows), kwargs,
                      put(batch.embedding_slots, rows), rope)
