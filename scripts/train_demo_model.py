"""Train the demo model (a tiny LLaVA-1.5 on the shapes task) and write it where mmjax ships it.

    .venv/bin/python scripts/train_demo_model.py                      # -> mmjax/assets/shapes-llava
    .venv/bin/python scripts/train_demo_model.py --out /tmp/m --steps 200
    .venv/bin/python scripts/train_demo_model.py --start /tmp/phase1 --start-phase 1   # the later phases

The recipe (``DemoModelRecipe``) trains in phases, each a fresh optimizer schedule; a
checkpoint saved after phase K goes on with ``--start DIR --start-phase K``. Seeded: the
same command on the same software writes the same weights. Prints JSON: the recipe, the
loss at the start and the end, the training time.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

from mmjax.training.demo_model import DemoModelRecipe, train_demo_model
from mmjax.training.checkpoint import save_pretrained

SHIPPED = os.path.join(os.path.dirname(__file__), "..", "mmjax", "assets", "shapes-llava")


def main(argv: list[str] | None = None) -> int:
    defaults = DemoModelRecipe()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=SHIPPED, help="the checkpoint directory to write")
    parser.add_argument("--steps", type=int, default=defaults.steps)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--start", help="a checkpoint this recipe's phases before --start-phase wrote")
    parser.add_argument("--start-phase", type=int, default=0, help="the phase to go on from (with --start)")
    args = parser.parse_args(argv)
    recipe = dataclasses.replace(defaults, steps=args.steps, seed=args.seed)
    result = train_demo_model(recipe, start=args.start, start_phase=args.start_phase)
    save_pretrained(result.llm, args.out)
    window = max(1, min(50, len(result.losses) // 10))
    print(json.dumps({
        "out": os.path.abspath(args.out), "recipe": dataclasses.asdict(recipe),
        "loss_first_steps": sum(result.losses[:window]) / window,
        "loss_last_steps": sum(result.losses[-window:]) / window,
        "train_seconds": round(result.seconds, 1),
    }, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
