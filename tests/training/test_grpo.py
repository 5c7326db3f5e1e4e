"""GRPO (``mmjax.training.grpo``): the group advantages, the clipped objective against numpy, the ratio of
exactly 1.0 at the first update of a batch sampled by a batch-invariant engine, and a step that raises the
logprob of an answer with a positive advantage."""

from __future__ import annotations

import functools
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from PIL import Image

import mmjax
from mmjax.training import GRPOTrainer, TrainExample, group_advantages, grpo_loss, rollout_batch

PROMPT = "USER: <image>\nWhat color is it? ASSISTANT:"
ENGINE = mmjax.EngineConfig(batch_invariant=True, max_num_seqs=8)


@functools.cache
def checkpoint() -> str:
    from mmjax.testing.checkpoints import make_tiny_llava_checkpoint

    return make_tiny_llava_checkpoint(tempfile.mkdtemp(prefix="mmjax-grpo-") + "/llava", seed=23)


def prompts() -> list[dict]:
    colors = [(220, 40, 40), (40, 80, 220)]
    return [{"prompt": PROMPT, "multi_modal_data": {"image": Image.new("RGB", (30 + 6 * i, 30), c)}}
            for i, c in enumerate(colors)]


def rollouts(llm, answers_per_prompt: int = 2, max_tokens: int = 3):
    """Each prompt ``answers_per_prompt`` times, each answer sampled with its own seed, with logprobs."""
    asked = [p for p in prompts() for _ in range(answers_per_prompt)]
    params = [mmjax.SamplingParams(temperature=1.0, seed=100 + i, max_tokens=max_tokens, logprobs=0)
              for i in range(len(asked))]
    return asked, mmjax.generate(llm, asked, params, engine_config=ENGINE, use_tqdm=False)


def reference_advantages(rewards: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    out = np.zeros_like(rewards, dtype=np.float64)
    for q, row in enumerate(rewards):
        if row.max() != row.min():
            out[q] = (row - row.mean()) / (np.sqrt(np.mean((row - row.mean()) ** 2)) + eps)
    return out


def test_group_advantages_against_numpy():
    rng = np.random.default_rng(0)
    rewards = rng.integers(0, 2, (6, 5)).astype(float)
    rewards[0] = 1.0  # a group all right: nothing to learn
    rewards[1] = 0.0
    rewards[2] = rng.normal(size=5)
    rewards[3] = 0.1  # equal but not exactly representable: still exactly 0
    got = group_advantages(rewards)
    assert got.dtype == np.float32 and got.shape == (6, 5)
    np.testing.assert_allclose(got, reference_advantages(rewards), rtol=1e-6, atol=1e-6)
    assert not got[:2].any() and not got[3].any()
    np.testing.assert_allclose(got.mean(axis=1), 0.0, atol=1e-6)
    centred = group_advantages(rewards, scale_by_std=False)
    np.testing.assert_allclose(centred[4], rewards[4] - rewards[4].mean(), rtol=1e-6)
    with pytest.raises(ValueError, match="questions, answers"):
        group_advantages(np.zeros(4))


def numpy_surrogate(new, old, adv, mask, low, high, aggregation):
    ratio = np.exp(new - old)
    objective = np.minimum(ratio * adv[:, None], np.clip(ratio, 1 - low, 1 + high) * adv[:, None])
    if aggregation == "token":
        return -(objective * mask).sum() / mask.sum()
    rows = mask.sum(axis=1) > 0
    return -np.mean((objective * mask).sum(axis=1)[rows] / mask.sum(axis=1)[rows])


@pytest.mark.parametrize("aggregation", ["token", "sequence"])
def test_the_clipped_objective_on_the_model_against_numpy(aggregation):
    """The loss of ``GRPOTrainer``'s objective on sampled answers equals the clipped surrogate computed in numpy
    from ``mmjax.score``'s logprobs (an independent path: collated again, another batch size), with old
    logprobs moved so that some ratios are clipped; the surrogate's gradient with respect to each token's
    logprob is ``-A * ratio / n`` where the ratio is inside its range (or on the side that does not bind), 0
    where it is clipped."""
    from mmjax.training.grpo import grpo_objective, trainable_split

    llm = mmjax.load(checkpoint())
    asked, outputs = rollouts(llm)
    advantages = np.array([1.0, -1.0, 0.5, -0.5], np.float32)
    batch = rollout_batch(llm, asked, outputs, advantages, batch_size=6)  # two padding rows
    mask = np.asarray(batch.mask)
    rng = np.random.default_rng(1)
    shift = np.where(mask, rng.choice([-0.5, -0.1, 0.1, 0.5], size=mask.shape), 0.0).astype(np.float32)
    moved = type(batch)(batch.batch, batch.old_logprobs + shift, batch.advantages)

    scored = mmjax.score(llm, [TrainExample(p, list(o.outputs[0].token_ids)) for p, o in zip(asked, outputs)],
                         batch_size=3)
    new = np.zeros(mask.shape, np.float32)
    for b, s in enumerate(scored):
        new[b, mask[b]] = s
    np.testing.assert_array_equal(new, batch.old_logprobs)  # the engine's logprobs are score's, bit for bit
    want = numpy_surrogate(new.astype(np.float64), np.asarray(moved.old_logprobs, np.float64),
                           np.asarray(moved.advantages, np.float64), mask, 0.2, 0.3, aggregation)

    split = trainable_split(llm, "language")
    params, frozen = split.split(llm.state)
    loss, stats = jax.jit(grpo_objective(llm.graphdef, split, None, clip_low=0.2, clip_high=0.3,
                                         aggregation=aggregation))(params, frozen, moved)
    assert float(loss) == pytest.approx(want, rel=1e-5, abs=1e-7)
    ratio = np.exp(-shift[mask])
    assert 0 < float(stats["clip_fraction"]) < 1
    assert float(stats["ratio_min"]) == pytest.approx(ratio.min(), rel=1e-5)
    assert float(stats["max_abs_log_ratio"]) == pytest.approx(0.5, rel=1e-5)

    # d loss / d new logprob, token mean: -A r / n unless the clipped term is the smaller one
    grad = np.asarray(jax.grad(lambda x: grpo_loss(x, moved.old_logprobs, moved.advantages, mask, clip_low=0.2,
                                                   clip_high=0.3)[0])(jnp.asarray(new)))
    r = np.exp(new - moved.old_logprobs)
    a = np.asarray(moved.advantages)[:, None] * np.ones_like(r)
    active = mask & ~(((a > 0) & (r > 1.3)) | ((a < 0) & (r < 0.8)))
    np.testing.assert_allclose(grad, np.where(active, -a * r / mask.sum(), 0.0), rtol=1e-5, atol=1e-9)
    assert (grad[active & (a > 0)] < 0).all() and (grad[active & (a < 0)] > 0).all()


def test_the_ratio_is_exactly_one_at_the_first_update_of_each_batch():
    """Sampled by a batch-invariant engine, scored by the trainer's forward pass in batch-invariant numerics:
    ``new - old`` is exactly 0 at the first update, the second update (same batch) has moved away, and after
    ``update_weights`` the next batch starts at exactly 1.0 again."""
    llm = mmjax.load(checkpoint())
    trainer = GRPOTrainer(llm, optimizer=optax.sgd(0.5), updates_per_batch=2)
    for _ in range(2):
        asked, outputs = rollouts(llm)
        first, second = trainer.update(rollout_batch(llm, asked, outputs, [1.0, -1.0, -1.0, 1.0]))
        assert first.max_abs_log_ratio == 0.0 and first.ratio_min == first.ratio_max == 1.0
        assert second.max_abs_log_ratio > 0.0
        llm.update_weights(trainer.llm)


def test_a_step_raises_the_logprob_of_an_answer_with_a_positive_advantage():
    llm = mmjax.load(checkpoint())
    asked, outputs = rollouts(llm, answers_per_prompt=1, max_tokens=2)
    examples = [TrainExample(p, list(o.outputs[0].token_ids)) for p, o in zip(asked, outputs)]
    before = [float(s.sum()) for s in mmjax.score(llm, examples)]
    trainer = GRPOTrainer(llm, optimizer=optax.sgd(0.1), trainable="all", batch_invariant=False)
    trainer.update(rollout_batch(llm, asked, outputs, [1.0, -1.0]))
    after = [float(s.sum()) for s in mmjax.score(trainer.llm, examples)]
    assert after[0] > before[0] and after[1] < before[1]
    assert [float(s.sum()) for s in mmjax.score(llm, examples)] == before  # the trainer copied llm's weights


def test_with_the_vision_tower_trained_the_ratio_is_within_float_rounding_of_one():
    """trainable='all' differentiates the vision tower, whose XLA numerics batch_invariant_numerics does not pin:
    in the gradient's program its forward rounds differently (measured: max |new - old| 9.5e-7 here, 3.1e-7 on
    the demo model), so the ratio is 1 to float32 rounding, not to the bit; 'language' (the default) freezes it."""
    llm = mmjax.load(checkpoint())
    trainer = GRPOTrainer(llm, optimizer=optax.sgd(0.5), trainable="all")
    asked, outputs = rollouts(llm)
    (first,) = trainer.update(rollout_batch(llm, asked, outputs, [1.0, -1.0, -1.0, 1.0]))
    assert first.max_abs_log_ratio < 5e-6


def test_sampled_ids_past_the_tokenizer_are_scored():
    """The demo model's output layer (448) is wider than its tokenizer (359 tokens); the engine samples from all
    of it, so a rollout may hold an id the tokenizer does not have: it is scored, not refused. Past the model's
    vocabulary an id is refused."""
    from mmjax.training import collate

    llm = mmjax.load(mmjax.demo_checkpoint())
    vocab = llm.model.text_config.vocab_size
    assert len(llm.tokenizer) < 400 < vocab
    prompt = {"prompt": "USER: <image>\nHow many shapes are there? ASSISTANT:",
              "multi_modal_data": {"image": Image.new("RGB", (64, 64), (255, 255, 255))}}
    labels = np.asarray(collate(llm, [TrainExample(prompt, [400, 2])]).labels)
    assert labels[labels >= 0].tolist() == [400, 2]
    with pytest.raises(ValueError, match=f"ints in \\[0, {vocab}\\)"):
        collate(llm, [TrainExample(prompt, [vocab])])
