"""The recipe of the demo model: a tiny LLaVA-1.5 trained by ``mmjax.train`` on the shapes task.

``scripts/train_demo_model.py`` runs it and writes the checkpoint that ships inside the
package (``mmjax.demo_checkpoint()``). Everything is seeded: the same command on the same
software gives the same weights.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from collections.abc import Iterator
from typing import Any

import optax

from mmjax.training.examples import TrainExample
from mmjax.training.shapes_task import COLORS, PROMPT_TEMPLATE, SHAPES, questions, random_scene, training_examples
from mmjax.training.trainer import TrainResult, train


@dataclasses.dataclass(frozen=True, kw_only=True)
class DemoModelRecipe:
    """The demo model's sizes and its training schedule.

    The processor resizes any image to ``image_size`` (``image_size // patch_size`` squared
    image tokens per image); the rest are the Llama decoder's and CLIP tower's widths. The
    first ``single_shape_steps`` steps see scenes of one shape only (a curriculum); then scenes
    of one, two or three shapes at the odds ``shape_counts``. Each scene is a conversation of
    ``turns`` different questions, their kinds (colour, shape, count) drawn at the odds
    ``kind_weights``: the hard parts of the task are which of several shapes a question names
    and counting crowded scenes, so two- and three-shape scenes get most of the steps and
    shape and count questions 4.5 times the odds of colour ones. Each
    ``(steps, peak learning rate)`` of ``refine`` restarts the schedule for that many more
    steps on new scenes (the stream of ``seed + i`` for the i-th). ``json_answers[i]``: the odds of a
    question of phase ``i`` asking for a JSON answer (``Question.as_json``; the last phase teaches the
    format that structured outputs then enforce).
    """

    image_size: int = 64
    patch_size: int = 8
    vision_hidden: int = 64
    vision_intermediate: int = 128
    vision_layers: int = 3
    text_hidden: int = 128
    text_layers: int = 3
    vocab_size: int = 448
    steps: int = 4000
    batch_size: int = 32
    peak_learning_rate: float = 1e-3
    warmup_steps: int = 200
    weight_decay: float = 0.01
    single_shape_steps: int = 900
    shape_counts: tuple[float, float, float] = (0.1, 0.4, 0.5)
    kind_weights: tuple[float, float, float] = (0.1, 0.45, 0.45)
    turns: int = 3
    refine: tuple[tuple[int, float], ...] = ((1500, 5e-4), (1500, 5e-4))
    json_answers: tuple[float, ...] = (0.0, 0.0, 0.3)
    seed: int = 0

    def examples(self, phase: int = 0) -> Iterator[TrainExample]:
        """The training stream of ``phase`` (0 the first, with the curriculum; i the i-th of ``refine``)."""
        first = self.single_shape_steps * self.batch_size if phase == 0 else 0
        json_fraction = self.json_answers[phase] if phase < len(self.json_answers) else 0.0
        return training_examples(self.seed + phase, single_shape_first=first, shape_counts=self.shape_counts,
                                 kind_weights=self.kind_weights, turns=self.turns, json_fraction=json_fraction)

    def optimizer(self, phase: int = 0) -> optax.GradientTransformation:
        """AdamW with a linear warm-up, cosine decay to zero, and gradients clipped at norm 1, for
        ``phase`` (0 the first, i the i-th of ``refine``)."""
        steps, peak = self.refine[phase - 1] if phase else (self.steps, self.peak_learning_rate)
        warmup = min(self.warmup_steps, steps // 10)  # a shortened run (a test) still decays
        schedule = optax.warmup_cosine_decay_schedule(0.0, peak, warmup, steps)
        return optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule, weight_decay=self.weight_decay))


def task_corpus() -> list[str]:
    """Lines the demo tokenizer learns its merges from: every prompt and answer of the task."""
    import numpy as np

    lines = {PROMPT_TEMPLATE.format(question=q.text) + " " + q.answer
             for q in questions_of_all_kinds()}
    lines.update(f"The {color} {shape}." for color in COLORS for shape in SHAPES)
    lines.update(str(n) for n in range(10))
    return sorted(lines) + [" ".join(sorted(COLORS)), " ".join(SHAPES), str(np.arange(10))]


def questions_of_all_kinds() -> list[Any]:
    """The questions of 200 seeded scenes: every question text and answer the task has."""
    import numpy as np

    rng = np.random.default_rng(0)
    return [q for _ in range(200) for q in questions(random_scene(rng))]


def make_demo_base_checkpoint(path: str | os.PathLike, recipe: DemoModelRecipe = DemoModelRecipe()) -> str:
    """The untrained demo model (seeded random weights, the task's tokenizer) at ``path``."""
    from mmjax.testing.random_llava import make_random_llava_checkpoint
    from mmjax.testing.tokenizer import make_tiny_tokenizer

    tokenizer = make_tiny_tokenizer(recipe.vocab_size, corpus=task_corpus())
    return make_random_llava_checkpoint(
        path, image_size=recipe.image_size, patch_size=recipe.patch_size, vision_hidden=recipe.vision_hidden,
        text_hidden=recipe.text_hidden, num_layers=recipe.text_layers, vocab_size=recipe.vocab_size,
        seed=recipe.seed, tokenizer=tokenizer, vision_config={"num_hidden_layers": recipe.vision_layers,
                                                           "intermediate_size": recipe.vision_intermediate},
        llava_config={"vision_feature_layer": -1})


def train_demo_model(recipe: DemoModelRecipe = DemoModelRecipe(), *, use_tqdm: bool = True,
                     start: str | None = None, start_phase: int = 0) -> TrainResult:
    """Write the untrained model to a temporary directory, load it, and train it on the shapes task,
    phase after phase.

    ``start``, ``start_phase``: a checkpoint this recipe's phases before ``start_phase`` wrote, to
    run the rest alone.
    """
    from mmjax.llm import load

    settings = dict(batch_size=recipe.batch_size, trainable="all", seed=recipe.seed, use_tqdm=use_tqdm,
                    length_bucket=16)
    results = []
    if start is None:
        base = make_demo_base_checkpoint(tempfile.mkdtemp(prefix="mmjax-demo-base-"), recipe)
        llm = load(base, mm_processor_cache_gb=0)  # every scene is new: caching them would only cost
        results.append(train(llm, recipe.examples(), steps=recipe.steps, optimizer=recipe.optimizer(), **settings))
        llm, start_phase = results[-1].llm, 1
    else:
        llm = load(start, mm_processor_cache_gb=0)
    for phase in range(max(start_phase, 1), len(recipe.refine) + 1):
        results.append(train(llm, recipe.examples(phase), steps=recipe.refine[phase - 1][0],
                             optimizer=recipe.optimizer(phase), **settings))
        llm = results[-1].llm
    return TrainResult(llm, [x for r in results for x in r.losses], sum(r.seconds for r in results))
