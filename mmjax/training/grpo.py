"""GRPO-style policy-gradient updates from the training pieces: rollouts in, a new ``LLM`` out.

One reinforcement-learning step on a batch of prompts (several questions, a group of answers to each; shapes
below name these dimensions in words, ``[questions, answers]``, as ``mmjax.types`` asks of one-off dimensions):

1. sample a group of answers per question with ``mmjax.generate`` (``SamplingParams(temperature=1.0, seed=...,
   logprobs=0)``, a distinct seed per answer) through an engine built with ``EngineConfig(batch_invariant=True)``;
2. reward each answer, ``rewards [questions, answers]``, and normalise them within each question's group
   (``group_advantages``);
3. ``rollout_batch``: the prompts with the sampled token ids as targets (``TrainExample(prompt, token_ids)``,
   scored as given), the engine's logprob of each sampled token (``old_logprobs``) and the advantages;
4. ``GRPOTrainer.update``: one or more optax steps on the clipped objective (``grpo_loss``), the model's
   token logprobs computed by the loss's forward pass (``batch_token_logprobs``) traced in batch-invariant
   numerics (``mmjax.batch_invariant``);
5. ``llm.update_weights(trainer.llm)``: the engine samples the next batch from the new weights.

Because the engine and the loss trace the same forward pass in the same fixed-order numerics, the
trainer's logprob of a sampled token under the weights that sampled it equals the engine's bit for bit:
at the first update of a batch ``new_logprob - old_logprob`` is exactly 0 and the ratio exactly 1.0
(``UpdateStats.max_abs_log_ratio == 0.0``), so the importance ratio measures only how far the updates
have moved the policy, never a mismatch between the inference and the training numerics.

Conventions: no KL penalty against a reference model (as DAPO and Dr. GRPO drop it), the loss averaged
over every scored token of the batch by default (``aggregation="token"``, DAPO's token-level mean; the
original GRPO's per-sequence mean is ``aggregation="sequence"``), the advantage normalised by the group's
standard deviation (Dr. GRPO leaves it out: ``scale_by_std=False``).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from mmjax.batch_invariant import batch_invariant_numerics
from mmjax.engine.loaded_model import LoadedModel
from mmjax.engine.outputs import CompletionOutput, RequestOutput
from mmjax.models.architectures import family_of
from mmjax.models.common.family import model_quantization
from mmjax.registry import PromptInputs
from mmjax.training.examples import TrainBatch, TrainExample, collate
from mmjax.training.lora import (
    LoraConfig, adapted_leaves, apply_adapters, init_adapters, merge_adapters, scale_leaves,
)
from mmjax.training.loss import batch_token_logprobs
from mmjax.training.params import TRAINABLE, ParamSplit
from mmjax.types import Array, Float

Aggregation = Literal["token", "sequence"]


def group_advantages(rewards: Any, eps: float = 1e-6, scale_by_std: bool = True) -> np.ndarray:
    """Group-normalised advantages: ``(r - mean) / (std + eps)`` within each row (one question's answers).

    Args:
      rewards: ``[questions, answers]``: each question's group of answers.
      eps: added to the standard deviation (the population one, ``ddof=0``).
      scale_by_std: divide by ``std + eps`` (GRPO); ``False`` keeps ``r - mean`` (Dr. GRPO).

    Returns:
      float32 ``[questions, answers]``; exactly 0 for every answer of a group whose rewards are all equal (nothing to
      learn from it).
    """
    r = np.asarray(rewards, np.float64)
    if r.ndim != 2 or r.shape[1] < 1:
        raise ValueError(f"rewards must be [questions, answers per question], got shape {r.shape}")
    centred = r - r.mean(axis=1, keepdims=True)
    advantages = centred / (r.std(axis=1, keepdims=True) + eps) if scale_by_std else centred
    same = r.max(axis=1, keepdims=True) == r.min(axis=1, keepdims=True)
    return np.where(same, 0.0, advantages).astype(np.float32)


def answer_seeds(seed: int, step: int, count: int) -> list[int]:
    """``count`` distinct sampling seeds (``SamplingParams.seed``) for the answers of one step, a function of
    ``(seed, step)`` alone: the answers to one prompt differ, and a rerun samples the same answers."""
    return [int(s) for s in np.random.default_rng([seed, step]).choice(2**31 - 1, count, replace=False)]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class RolloutBatch:
    """Sampled answers ready for a policy-gradient step (a PyTree, an argument of ``jit``).

    Attributes:
      batch: the prompts with the sampled token ids as targets (``collate`` of ``TrainExample(prompt,
        token_ids)``): ``labels [B, T]`` holds the sampled tokens, -1 elsewhere.
      old_logprobs: float32 ``[B, T-1]``: the sampling policy's logprob of ``labels[:, t + 1]``, aligned with
        ``batch_token_logprobs`` (0 where nothing is scored).
      advantages: float32 ``[B]``: each answer's advantage (0 on padding rows).
    """

    batch: TrainBatch
    old_logprobs: np.ndarray
    advantages: np.ndarray

    @property
    def mask(self) -> np.ndarray:
        """bool ``[B, T-1]``: the scored (sampled) tokens (numpy or jax, as ``batch.labels``)."""
        return self.batch.labels[:, 1:] >= 0


def completion_of(output: RequestOutput | CompletionOutput) -> CompletionOutput:
    """A request's first completion (or the completion itself)."""
    return output.outputs[0] if isinstance(output, RequestOutput) else output


def sampled_logprobs(output: RequestOutput | CompletionOutput) -> np.ndarray:
    """float32 ``[sampled]``: the engine's logprob of each sampled token (``SamplingParams(logprobs=0)``
    or more: the sampled token is always among them)."""
    completion = completion_of(output)
    if completion.logprobs is None:
        raise ValueError("a rollout needs the sampled tokens' logprobs: sample with SamplingParams(logprobs=0)")
    if len(completion.logprobs) != len(completion.token_ids):
        raise ValueError(f"{len(completion.logprobs)} logprobs for {len(completion.token_ids)} sampled tokens")
    return np.array([step[t].logprob for step, t in zip(completion.logprobs, completion.token_ids)], np.float32)


def rollout_batch(llm: LoadedModel, prompts: Sequence[PromptInputs],
                  outputs: Sequence[RequestOutput | CompletionOutput], advantages: Any, *,
                  batch_size: int | None = None, length_bucket: int = 16) -> RolloutBatch:
    """The answers ``outputs[i]`` to ``prompts[i]`` as one ``RolloutBatch`` of ``batch_size`` rows.

    Each answer is scored exactly as sampled (``TrainExample(prompt, token_ids)``): a finished answer's ids end
    with the end of sequence the engine sampled, a truncated one (``finish_reason == "length"``) has none.
    ``old_logprobs`` are the engine's logprobs of those tokens: with ``temperature=1.0`` (and no top-k / top-p)
    they are the sampling policy's. The engine reports raw logprobs, before temperature: at another
    temperature they are not the distribution the tokens were drawn from.

    Args:
      prompts: ``[rows]`` prompts as given to ``generate``.
      outputs: ``[rows]`` what ``generate`` returned for them, sampled with ``logprobs=0``.
      advantages: ``[rows]`` (e.g. ``group_advantages(rewards).reshape(-1)``).
      batch_size: rows of the batch (default ``len(prompts)``; more rows are padding, so that every step has one shape).
      length_bucket: sequences padded to a multiple of this.
    """
    advantages = np.asarray(advantages, np.float32).reshape(-1)
    if not len(prompts) == len(outputs) == len(advantages):
        raise ValueError(f"{len(prompts)} prompts, {len(outputs)} outputs and {len(advantages)} advantages")
    logprobs = [sampled_logprobs(o) for o in outputs]
    for i, o in enumerate(outputs):
        if not completion_of(o).token_ids:
            raise ValueError(f"output {i} sampled no token")
    examples = [TrainExample(p, list(completion_of(o).token_ids)) for p, o in zip(prompts, outputs)]
    batch = collate(llm, examples, batch_size=batch_size, length_bucket=length_bucket)
    scored = np.asarray(batch.labels)[:, 1:] >= 0
    old = np.zeros(scored.shape, np.float32)
    for b, lp in enumerate(logprobs):
        if scored[b].sum() != len(lp):
            raise ValueError(f"output {b}: {len(lp)} sampled tokens but {scored[b].sum()} scored positions")
        old[b, scored[b]] = lp
    rows = np.zeros(scored.shape[0], np.float32)
    rows[:len(advantages)] = advantages
    return RolloutBatch(batch, old, rows)


def grpo_loss(new_logprobs: Float[Array, "B T-1"], old_logprobs: Float[Array, "B T-1"],
              advantages: Float[Array, "B"], mask: Any, *, clip_low: float = 0.2, clip_high: float = 0.2,
              aggregation: Aggregation = "token") -> tuple[Float[Array, ""], dict[str, Float[Array, ""]]]:
    """The clipped surrogate (PPO's, per token), negated to be minimised, and what it saw.

    Per scored token: ``ratio = exp(new - old)``, ``objective = min(ratio * A, clip(ratio, 1 - clip_low,
    1 + clip_high) * A)`` with ``A`` its answer's advantage. ``aggregation="token"``: the mean over every scored
    token of the batch; ``"sequence"``: the mean over each answer's tokens, then over the answers.

    Args:
      new_logprobs, old_logprobs: float32 ``[B, T-1]``: the model's and the sampling policy's logprob of each token.
      advantages: ``[B]``.
      mask: bool ``[B, T-1]``: the scored tokens.

    Returns:
      ``(loss, stats)``; ``stats``: ``ratio_min``, ``ratio_max``, ``ratio_mean`` (over the scored tokens),
      ``max_abs_log_ratio`` (``max |new - old|``: exactly 0 when the trainer reproduces the sampler's logprobs),
      ``clip_fraction`` (scored tokens whose term is the clipped one).
    """
    if aggregation not in ("token", "sequence"):
        raise ValueError(f"aggregation must be 'token' or 'sequence', got {aggregation!r}")
    mask = jnp.asarray(mask, bool)
    weight = mask.astype(jnp.float32)
    log_ratio = jnp.where(mask, new_logprobs - old_logprobs, 0.0)
    ratio = jnp.exp(log_ratio)
    a = jnp.asarray(advantages, jnp.float32)[:, None]
    unclipped, clipped = ratio * a, jnp.clip(ratio, 1.0 - clip_low, 1.0 + clip_high) * a
    objective = jnp.minimum(unclipped, clipped)
    if aggregation == "token":
        loss = -jnp.sum(objective * weight) / jnp.maximum(jnp.sum(weight), 1.0)
    else:
        per_answer = jnp.sum(objective * weight, axis=1) / jnp.maximum(jnp.sum(weight, axis=1), 1.0)
        answers = jnp.sum(weight, axis=1) > 0
        loss = -jnp.sum(jnp.where(answers, per_answer, 0.0)) / jnp.maximum(jnp.sum(answers), 1)
    count = jnp.maximum(jnp.sum(weight), 1.0)
    stats = {
        "ratio_min": jnp.min(jnp.where(mask, ratio, jnp.inf)),
        "ratio_max": jnp.max(jnp.where(mask, ratio, -jnp.inf)),
        "ratio_mean": jnp.sum(ratio * weight) / count,
        "max_abs_log_ratio": jnp.max(jnp.abs(log_ratio)),
        "clip_fraction": jnp.sum(jnp.where(mask & (clipped < unclipped), 1.0, 0.0)) / count,
    }
    return loss, stats


def grpo_objective(graphdef: nnx.GraphDef, split: ParamSplit, lora_scale: float | None, *,
                   clip_low: float = 0.2, clip_high: float = 0.2, aggregation: Aggregation = "token",
                   batch_invariant: bool = True) -> Callable[..., tuple[jax.Array, dict[str, jax.Array]]]:
    """``loss(params, frozen, rollout) -> (loss, stats)``, as ``mmjax.training.objective`` for the clipped
    surrogate: ``params`` the trained leaves (or LoRA adapters, with ``lora_scale``), ``frozen`` the others.
    The model's token logprobs (``batch_token_logprobs``) are traced in batch-invariant numerics: the same
    bits as an engine built with ``EngineConfig(batch_invariant=True)`` and as ``mmjax.score``."""
    def loss(params: Any, frozen: Sequence[Any], rollout: RolloutBatch) -> tuple[jax.Array, dict[str, jax.Array]]:
        if lora_scale is None:
            state = split.merge(params, frozen)
        else:
            scales = scale_leaves(split, list(params))
            state = jax.tree.unflatten(split.treedef, apply_adapters(frozen, params, lora_scale, scales))
        with batch_invariant_numerics() if batch_invariant else contextlib.nullcontext():
            new = batch_token_logprobs(graphdef, state, rollout.batch)
        return grpo_loss(new, rollout.old_logprobs, rollout.advantages, rollout.mask, clip_low=clip_low,
                         clip_high=clip_high, aggregation=aggregation)

    return loss


def make_grpo_step(loss: Callable[..., tuple[jax.Array, dict[str, jax.Array]]],
                   optimizer: optax.GradientTransformation) -> Callable[..., Any]:
    """``step(params, opt_state, frozen, rollout) -> (params, opt_state, loss, stats)``, jitted; params and
    the optimizer state donated (``make_train_step`` with the loss's stats kept)."""
    def step(params, opt_state, frozen, rollout):
        (value, stats), grads = jax.value_and_grad(loss, has_aux=True)(params, frozen, rollout)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value, stats

    return jax.jit(step, donate_argnums=(0, 1))


#: What ``GRPOTrainer``'s ``trainable=`` accepts: ``mmjax.train``'s and "language".
GRPO_TRAINABLE = ("language", *TRAINABLE)


def trainable_split(llm: LoadedModel, trainable: str) -> ParamSplit:
    """``ParamSplit.build`` for ``mmjax.train``'s names, and "language": the language model (every leaf under the
    root of the family's ``lora_prefix``, ``language_model/``) and the projector; the vision tower frozen."""
    if trainable not in GRPO_TRAINABLE:
        raise ValueError(f"trainable must be one of {GRPO_TRAINABLE}, got {trainable!r}")
    family = family_of(llm.model)
    if trainable != "language":
        return ParamSplit.build(llm.state, trainable, family.trainable_groups)
    split = ParamSplit.build(llm.state, "all")
    prefixes = (family.lora_prefix.split("/")[0] + "/", *family.trainable_groups.get("projector", ()))
    trained = tuple(i for i, path in enumerate(split.paths) if path.startswith(prefixes))
    if not trained:
        raise ValueError(f"the model has no parameters under {list(prefixes)} to train")
    return ParamSplit(split.treedef, split.paths, trained)


@dataclasses.dataclass(frozen=True)
class UpdateStats:
    """One optimizer step of ``GRPOTrainer.update``: the loss and ``grpo_loss``'s stats, as floats."""

    loss: float
    ratio_min: float
    ratio_max: float
    ratio_mean: float
    max_abs_log_ratio: float
    clip_fraction: float


class GRPOTrainer:
    """The policy's trained parameters and optimizer state between reinforcement-learning steps.

    ``update(rollout)`` runs ``updates_per_batch`` optax steps on one ``RolloutBatch`` (the first at exactly the
    sampling weights: its ratio is 1.0 when the rollout came from a batch-invariant engine with these weights);
    ``llm`` is a new handle on the current weights (LoRA adapters merged) for ``llm.update_weights``.

    Args:
      llm: the policy at the start (unchanged: its parameters are copied).
      optimizer: optax; default ``optax.adamw(1e-5)`` (the demo model learns with 3e-4: docs/rl.md).
      trainable: "language" (the default: the language model and the projector, the vision tower frozen),
        "projector", "lora" (``lora`` configures the adapters) or "all", as in ``mmjax.train``. With "all" the
        first update's ratio is not exactly 1: the gradient's program rounds the vision tower's forward
        differently (its XLA numerics are not pinned by ``batch_invariant_numerics``; ~3e-7 on the demo model).
      updates_per_batch: optax steps per rollout (PPO's epochs; from the second on the clipping acts).
      clip_low, clip_high: the ratio's clipping range ``[1 - clip_low, 1 + clip_high]`` (DAPO raises
        ``clip_high``).
      aggregation: "token" or "sequence" (``grpo_loss``).
      batch_invariant: trace the loss in batch-invariant numerics (the default: the ratio guarantee; several
        times slower on CPU).
      seed: the LoRA adapters' initialisation.

    Raises:
      ValueError: a bad argument; "language" or "all" on a model whose projections are int8.
    """

    def __init__(self, llm: LoadedModel, *, optimizer: optax.GradientTransformation | None = None,
                 trainable: str = "language", lora: LoraConfig | None = None, updates_per_batch: int = 1,
                 clip_low: float = 0.2, clip_high: float = 0.2, aggregation: Aggregation = "token",
                 batch_invariant: bool = True, seed: int = 0) -> None:
        if isinstance(updates_per_batch, bool) or not isinstance(updates_per_batch, int) or updates_per_batch < 1:
            raise ValueError(f"updates_per_batch must be an int >= 1, got {updates_per_batch!r}")
        if lora is not None and trainable != "lora":
            raise ValueError(f"a LoraConfig was given but trainable={trainable!r}; pass trainable='lora'")
        if aggregation not in ("token", "sequence"):
            raise ValueError(f"aggregation must be 'token' or 'sequence', got {aggregation!r}")
        if trainable in ("all", "language") and model_quantization(llm.model) is not None:
            raise ValueError(f"trainable={trainable!r} needs float projections, but this model's are int8: "
                             "train LoRA adapters over them (trainable='lora')")
        family = family_of(llm.model)
        self._llm = llm
        self._split = trainable_split(llm, trainable)
        self._leaves = jax.tree.leaves(llm.state)
        self._lora = trainable == "lora"
        if self._lora:
            lora = lora or LoraConfig()
            adapted = adapted_leaves(self._split, lora, family.lora_prefix)
            self._params = init_adapters(self._leaves, adapted, lora, jax.random.key(seed))
            self._frozen, self._scale = self._leaves, lora.scale
        else:
            params, self._frozen = self._split.split(llm.state)
            self._params, self._scale = [jnp.array(x, copy=True) for x in params], None  # donated
        self.optimizer = optax.adamw(1e-5) if optimizer is None else optimizer
        self._opt_state = self.optimizer.init(self._params)
        self.updates_per_batch = updates_per_batch
        self._step = make_grpo_step(grpo_objective(llm.graphdef, self._split, self._scale, clip_low=clip_low,
                                                   clip_high=clip_high, aggregation=aggregation,
                                                   batch_invariant=batch_invariant), self.optimizer)

    def update(self, rollout: RolloutBatch) -> list[UpdateStats]:
        """``updates_per_batch`` optimizer steps on ``rollout``; each step's loss and ratio statistics."""
        out = []
        for _ in range(self.updates_per_batch):
            self._params, self._opt_state, loss, stats = self._step(self._params, self._opt_state, self._frozen,
                                                                   rollout)
            out.append(UpdateStats(float(loss), **{k: float(v) for k, v in stats.items()}))
        return out

    @property
    def llm(self) -> LoadedModel:
        """A new handle on the current weights (copies: later updates do not touch it), for ``update_weights``."""
        if self._lora:
            leaves = merge_adapters(self._leaves, self._params, self._scale, scale_leaves(self._split,
                                                                                      list(self._params)))
        else:
            leaves = jax.tree.leaves(self._split.merge([jnp.array(x, copy=True) for x in self._params],
                                                       self._frozen))
        state = jax.tree.unflatten(self._split.treedef, leaves)
        return dataclasses.replace(self._llm, state=state, _engine=[], _mappers={})
