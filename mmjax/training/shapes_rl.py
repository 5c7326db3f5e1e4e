"""Reinforcement learning on the shapes task: a weakened demo model, questions to sample answers to, rewards,
and accuracy on held-out scenes (``scripts/rl_shapes.py``, ``notebooks/05_rl.ipynb``, docs/rl.md).

The weakened model (``weaken_counting``): the shipped demo model (``mmjax.demo_checkpoint()``) fine-tuned for
60 steps (LoRA adapters on the decoder's attention, merged) on scenes whose "How many shapes are there?" is
answered "3" at odds 0.55 whatever the scene holds, and right otherwise, while the colour and shape questions
about the same images keep their right answers. It picks up a habit, not a blindness: for a scene of one or
two shapes it now prefers "3" (about 0.55 against 0.45 for the right count), so its greedy count is mostly
wrong, while an answer sampled at temperature 1 is right nearly half of the time — a group of answers to one
question then holds right and wrong ones, which is what GRPO learns from. Its colour and shape answers stay
as they were. Everything is seeded: the same seed gives the same weights. (Count answers drawn uniformly at
random instead left too little of the skill: in 30-step runs on count questions GRPO relearned one and three
shapes but not two.)

Held-out accuracy is measured on the scenes of the second, independent renderer
(``mmjax.testing.shape_scenes``: anti-aliased, its own placement and triangles), as
``benchmarks/demo_model_accuracy.py`` does: every question of every scene answered greedily, right when the
stripped text equals the answer. The RL rollouts draw their scenes from the training generator
(``mmjax.training.shapes_task``) with their own seeds: no held-out scene is trained on.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import optax

from mmjax.engine.loaded_model import LoadedModel
from mmjax.training.examples import TrainExample
from mmjax.training.shapes_task import (
    FOLLOW_UP_TEMPLATE, QUESTION_KINDS, Question, draw_scene, questions, random_question, random_scene,
)
from mmjax.training.trainer import TrainResult, train


def biased_count_examples(seed: int, bias: float = 0.55, habit: str = "3", sides: tuple[int, int] = (224, 448)
                          ) -> Iterator[TrainExample]:
    """An endless stream: a new scene each and every question the task asks about it, in a random order (the
    first in the prompt, the others as follow-up turns), colour and shape questions answered right, "How many
    shapes are there?" answered ``habit`` at odds ``bias`` whatever the scene holds, else right."""
    rng = np.random.default_rng(seed)
    while True:
        scene = random_scene(rng)
        image = draw_scene(scene, int(rng.integers(sides[0], sides[1] + 1)))
        asked = questions(scene)
        answers = [" " + (habit if q.kind == "count" and rng.random() < bias else q.answer) for q in asked]
        first, *more = [(asked[i], answers[i]) for i in rng.permutation(len(asked))]
        follow_ups = tuple((FOLLOW_UP_TEMPLATE.format(question=q.text), a) for q, a in more)
        yield TrainExample({"prompt": first[0].prompt, "multi_modal_data": {"image": image}}, first[1], follow_ups)


def weaken_counting(llm: LoadedModel, *, steps: int = 60, batch_size: int = 16, learning_rate: float = 3e-3,
                    bias: float = 0.55, habit: str = "3", trainable: str = "lora", seed: int = 0, use_tqdm: bool = False
                    ) -> TrainResult:
    """``llm`` fine-tuned on ``biased_count_examples(seed, bias, habit)``: it no longer counts.

    AdamW with a linear warm-up (a tenth of the steps) and a cosine decay to zero from ``learning_rate``;
    ``trainable`` as ``mmjax.train``'s: LoRA adapters (the default, merged into the result) leave the vision
    tower and the projector as they were.
    """
    schedule = optax.warmup_cosine_decay_schedule(0.0, learning_rate, max(1, steps // 10), steps)
    return train(llm, biased_count_examples(seed, bias, habit), steps=steps, batch_size=batch_size,
                 optimizer=optax.adamw(schedule), trainable=trainable, seed=seed, use_tqdm=use_tqdm,
                 length_bucket=16)


def rollout_questions(rng: np.random.Generator, count: int,
                      kind_weights: tuple[float, float, float] = (1.0, 1.0, 1.0),
                      sides: tuple[int, int] = (224, 448)) -> list[tuple[dict[str, Any], Question]]:
    """``count`` questions about new scenes (the training generator's), each ``(prompt, question)``: a kind
    drawn at the odds ``kind_weights`` (colour, shape, count), a scene that has a question of that kind, one."""
    p = np.asarray(kind_weights, float) / sum(kind_weights)
    out = []
    while len(out) < count:
        kind = QUESTION_KINDS[int(rng.choice(3, p=p))]
        scene = random_scene(rng)
        if not any(q.kind == kind for q in questions(scene)):
            continue
        question = random_question(rng, scene, kind)
        image = draw_scene(scene, int(rng.integers(sides[0], sides[1] + 1)))
        out.append(({"prompt": question.prompt, "multi_modal_data": {"image": image}}, question))
    return out


@dataclasses.dataclass(frozen=True)
class Rollouts:
    """One step's answers, ready for ``rollout_batch``: ``questions`` groups of ``samples`` answers.

    Attributes:
      prompts, outputs: ``[questions * samples]``, group by group.
      questions: ``[questions]`` the ``Question`` of each group.
      rewards, advantages: float32 ``[questions, samples]`` (``group_advantages``).
      sampled_reward: the mean reward of every answer sampled this step (all rounds: the policy's accuracy at
        temperature 1 on the question mix).
      sampled_groups: groups sampled this step (all rounds).
    """

    prompts: list[Any]
    outputs: list[Any]
    questions: list[Question]
    rewards: np.ndarray
    advantages: np.ndarray
    sampled_reward: float
    sampled_groups: int

    @property
    def groups_with_signal(self) -> int:
        return int(np.any(self.advantages != 0, axis=1).sum())


def sample_groups(llm: LoadedModel, rng: np.random.Generator, *, questions: int, samples: int, engine_config: Any,
                  seed: int, step: int, kind_weights: tuple[float, float, float] = (1.0, 1.0, 1.0),
                  max_rounds: int = 4, max_tokens: int = 4) -> Rollouts:
    """``questions`` groups of ``samples`` answers each, sampled at temperature 1.0 through ``mmjax.generate``
    (``engine_config``; distinct seeds, ``answer_seeds(seed, step * max_rounds + round, ...)``), rewarded and
    normalised.

    Groups whose answers all got the same reward have no advantage (nothing to learn): like DAPO's dynamic
    sampling, more questions are drawn, up to ``max_rounds`` rounds, until ``questions`` groups have some; short
    of that, groups without signal fill the batch (its shape stays the same: one compiled update).
    """
    from mmjax.engine.generate import generate
    from mmjax.engine.sampling_params import SamplingParams
    from mmjax.training.grpo import answer_seeds, group_advantages

    kept: list[tuple[Any, Question, list[Any], np.ndarray, np.ndarray]] = []
    spare: list[tuple[Any, Question, list[Any], np.ndarray, np.ndarray]] = []
    all_rewards = []
    for round_ in range(max_rounds):
        asked = rollout_questions(rng, questions, kind_weights)
        prompts = [prompt for prompt, _ in asked for _ in range(samples)]
        params = [SamplingParams(temperature=1.0, seed=s, max_tokens=max_tokens, logprobs=0)
                  for s in answer_seeds(seed, step * max_rounds + round_, len(prompts))]
        outputs = generate(llm, prompts, params, engine_config=engine_config, use_tqdm=False)
        rewards = np.array([reward(o.outputs[0].text, q.answer) for o, (_, q) in
                            zip(outputs, [a for a in asked for _ in range(samples)])], np.float32)
        rewards = rewards.reshape(questions, samples)
        advantages = group_advantages(rewards)
        all_rewards.append(rewards)
        for i, (prompt, question) in enumerate(asked):
            group = (prompt, question, outputs[i * samples:(i + 1) * samples], rewards[i], advantages[i])
            (kept if advantages[i].any() else spare).append(group)
        if len(kept) >= questions:
            break
    groups = (kept + spare)[:questions]
    return Rollouts(
        prompts=[g[0] for g in groups for _ in range(samples)], outputs=[o for g in groups for o in g[2]],
        questions=[g[1] for g in groups], rewards=np.stack([g[3] for g in groups]),
        advantages=np.stack([g[4] for g in groups]), sampled_reward=float(np.mean(all_rewards)),
        sampled_groups=questions * len(all_rewards))


def reward(text: str, answer: str) -> float:
    """1.0 when the answer's stripped text is the right one, else 0.0."""
    return float(text.strip() == answer)


def question_kind(question: str) -> str:
    """"count", "color" or "shape" of a task question's text."""
    return "count" if question.startswith("How many") else "color" if "color" in question else "shape"


def held_out_accuracy(llm: LoadedModel, tasks: Sequence[Any], engine_config: Any = None,
                      max_tokens: int = 4) -> dict[str, Any]:
    """Greedy accuracy on every question of ``tasks`` (``mmjax.testing.shape_scenes.task_images``):
    ``{"accuracy": overall, "by_kind": {kind: accuracy}, "questions": n}``."""
    from mmjax.engine.generate import generate
    from mmjax.engine.sampling_params import SamplingParams
    from mmjax.testing.shape_scenes import prompt_for

    asked = [(q, a, t.image) for t in tasks for q, a in t.qa]
    prompts = [{"prompt": prompt_for(q), "multi_modal_data": {"image": image}} for q, _, image in asked]
    outputs = generate(llm, prompts, SamplingParams(max_tokens=max_tokens, temperature=0.0), use_tqdm=False,
                       engine_config=engine_config)
    right, by_kind = [], collections.defaultdict(list)
    for (question, answer, _), output in zip(asked, outputs):
        ok = reward(output.outputs[0].text, answer)
        right.append(ok)
        by_kind[question_kind(question)].append(ok)
    return {"accuracy": float(np.mean(right)), "questions": len(right),
            "by_kind": {k: float(np.mean(v)) for k, v in sorted(by_kind.items())}}
