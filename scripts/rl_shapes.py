"""Reinforcement learning (GRPO) on the demo model: a model weakened at counting learns it back from its own answers.

    .venv/bin/python scripts/rl_shapes.py                                  # the defaults: ~3.5 minutes on 2 cores
    .venv/bin/python scripts/rl_shapes.py --seed 1 --out /tmp/rl-seed1.json
    .venv/bin/python scripts/rl_shapes.py --steps 10 --eval-scenes 30     # a quick look

1. The weakened start (``mmjax.training.shapes_rl.weaken_counting``): the shipped demo model
   (``mmjax.demo_checkpoint()``) fine-tuned for 60 steps (LoRA on the decoder's attention, merged) on scenes
   whose "How many shapes are there?" is answered "3" at odds 0.55 whatever the scene holds, and right
   otherwise; colour and shape questions keep their right answers. It picks up a habit, not a blindness:
   where the scene holds one or two shapes it now prefers "3" (about 0.55 against 0.45 for the right count), so
   its greedy count is mostly wrong, while an answer sampled at temperature 1 is right nearly half of the
   time: the signal GRPO learns from, a few dozen steps from a visible improvement. (Count answers drawn
   uniformly at random instead left too little of the skill: in 30-step runs on count questions GRPO relearned
   one and three shapes but not two.) Saved with ``mmjax.save_pretrained`` to a temporary directory and loaded
   back: the policy. Seeded (``--weaken-seed``): every run starts from the same weights.
2. Held-out accuracy before: every question of ``--eval-scenes`` scenes of the second, independent renderer
   (``mmjax.testing.shape_scenes``, seed ``--eval-seed``; no scene the RL sees), answered greedily, right when
   the stripped text is the answer (as ``benchmarks/demo_model_accuracy.py``); by question kind.
3. ``--steps`` steps: ``--questions-per-step`` questions about new scenes of the training generator (all three
   kinds at equal odds; ``--kinds``), ``--samples-per-question`` answers each with distinct seeds
   (temperature 1.0, logprobs of the sampled tokens) through one engine with
   ``EngineConfig(batch_invariant=True)``; reward 1 for a right answer, else 0; group-normalised advantages;
   groups whose answers all scored the same carry no advantage, so a step draws more questions (up to
   ``--max-rounds`` rounds: DAPO's dynamic sampling, ``shapes_rl.sample_groups``) until its batch holds
   ``--questions-per-step`` groups with some; ``GRPOTrainer.update`` (AdamW, the language model and projector,
   token-mean clipped surrogate);
   ``llm.update_weights`` pushes the new weights into the same engine (no recompilation). Every step checks
   the first update's ratio: the trainer's logprobs of the sampled tokens equal the engine's bit for bit
   (``max |new - old| == 0``, the ratio exactly 1.0).
4. Held-out accuracy every ``--eval-every`` steps and at the end.

Prints JSON (also written to ``--out``): the settings, before / after accuracy (overall and by kind), the
reward and the ratio check of every step, the evaluations, and the wall times.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time

import numpy as np
import optax

import mmjax
from mmjax.testing.shape_scenes import task_images
from mmjax.training import GRPOTrainer, rollout_batch, save_pretrained
from mmjax.training.shapes_rl import held_out_accuracy, sample_groups, weaken_counting
from mmjax.training.shapes_task import QUESTION_KINDS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="RL steps (one rollout batch and update each)")
    parser.add_argument("--questions-per-step", type=int, default=8)
    parser.add_argument("--samples-per-question", type=int, default=4, help="G: answers per question")
    parser.add_argument("--seed", type=int, default=0, help="the rollouts' scenes and sampling seeds")
    parser.add_argument("--eval-scenes", type=int, default=100)
    parser.add_argument("--eval-seed", type=int, default=2000)
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--learning-rate", type=float, default=3e-4)
    parser.add_argument("--updates-per-batch", type=int, default=1)
    parser.add_argument("--kinds", default="color,shape,count", help="question kinds the rollouts ask")
    parser.add_argument("--max-rounds", type=int, default=4,
                        help="rounds of questions a step may draw to fill its batch with groups that have signal")
    parser.add_argument("--weaken-steps", type=int, default=60)
    parser.add_argument("--weaken-seed", type=int, default=0)
    parser.add_argument("--out", help="also write the JSON here")
    args = parser.parse_args(argv)
    kinds = args.kinds.split(",")
    if not kinds or any(k not in QUESTION_KINDS for k in kinds):
        parser.error(f"--kinds: a comma-separated subset of {QUESTION_KINDS}")
    kind_weights = tuple(float(k in kinds) for k in QUESTION_KINDS)
    questions, samples = args.questions_per_step, args.samples_per_question

    start = time.perf_counter()
    weakened = weaken_counting(mmjax.load(mmjax.demo_checkpoint()), steps=args.weaken_steps, seed=args.weaken_seed)
    llm = mmjax.load(save_pretrained(weakened.llm, tempfile.mkdtemp(prefix="mmjax-rl-weakened-")))
    weaken_seconds = time.perf_counter() - start
    engine = mmjax.EngineConfig(batch_invariant=True)  # one engine for the rollouts and the evaluations
    tasks = task_images(args.eval_scenes, args.eval_seed)
    before = held_out_accuracy(llm, tasks, engine)
    trainer = GRPOTrainer(llm, optimizer=optax.adamw(args.learning_rate), updates_per_batch=args.updates_per_batch)
    rng = np.random.default_rng(args.seed)
    steps, evals, rl_start = [], [], time.perf_counter()
    for step in range(args.steps):
        rollouts = sample_groups(llm, rng, questions=questions, samples=samples, engine_config=engine,
                                 seed=args.seed, step=step, kind_weights=kind_weights, max_rounds=args.max_rounds)
        stats = trainer.update(rollout_batch(llm, rollouts.prompts, rollouts.outputs, rollouts.advantages.reshape(-1),
                                             batch_size=questions * samples))
        llm.update_weights(trainer.llm)
        steps.append({"step": step + 1, "reward": rollouts.sampled_reward, "groups_sampled": rollouts.sampled_groups,
                      "groups_with_signal": rollouts.groups_with_signal, "loss": stats[0].loss,
                      "first_update_max_abs_log_ratio": stats[0].max_abs_log_ratio,
                      "first_update_ratio": [stats[0].ratio_min, stats[0].ratio_max],
                      "clip_fraction_last_update": stats[-1].clip_fraction})
        if (step + 1) % args.eval_every == 0 or step + 1 == args.steps:
            evals.append({"step": step + 1, **held_out_accuracy(llm, tasks, engine)})
    rl_seconds = time.perf_counter() - rl_start
    after = evals[-1] if evals else before
    ratio_exact = all(s["first_update_max_abs_log_ratio"] == 0.0 for s in steps)
    report = {
        "settings": vars(args),
        "held_out": {"scenes": args.eval_scenes, "questions": before["questions"], "renderer": "shape_scenes",
                     "seed": args.eval_seed},
        "before": {"accuracy": before["accuracy"], "by_kind": before["by_kind"]},
        "after": {"accuracy": after["accuracy"], "by_kind": after["by_kind"]},
        "ratio_exactly_one_at_every_first_update": ratio_exact,
        "evals": evals, "steps": steps,
        "seconds": {"weaken": round(weaken_seconds, 1), "rl_loop": round(rl_seconds, 1),
                    "total": round(time.perf_counter() - start, 1)},
    }
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    return 0 if ratio_exact else 1


if __name__ == "__main__":
    sys.exit(main())
