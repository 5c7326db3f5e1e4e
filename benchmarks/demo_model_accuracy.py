"""Accuracy of the shipped demo model on held-out scenes from the second, independent renderer.

    .venv/bin/python benchmarks/demo_model_accuracy.py                 # 500 scenes, the shipped model
    .venv/bin/python benchmarks/demo_model_accuracy.py --model DIR --scenes 100
    .venv/bin/python benchmarks/demo_model_accuracy.py --dtype bfloat16 --quantization int8

Every question of every scene (``mmjax.testing.shape_scenes``: anti-aliased, equilateral
triangles, its own placement; sides 224-400 px) is answered greedily through
``mmjax.generate``; prints JSON: overall accuracy, by question kind, by shape count, and
the confusions. The scenes' seed (1000) is not one the tests use.
"""

from __future__ import annotations

import argparse
import collections
import json
import time

import mmjax
from mmjax.testing.shape_scenes import answers_by_generate, task_images


def question_kind(question: str) -> str:
    return "count" if question.startswith("How many") else "color" if "color" in question else "shape"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a checkpoint directory (default: mmjax.demo_checkpoint())")
    parser.add_argument("--scenes", type=int, default=500)
    parser.add_argument("--seed", type=int, default=1000)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--quantization", choices=["int8"], help="int8 weights (mmjax.load's quantization=)")
    args = parser.parse_args()
    llm = mmjax.load(args.model or mmjax.demo_checkpoint(), dtype=args.dtype, quantization=args.quantization)
    tasks = task_images(args.scenes, args.seed)
    start = time.perf_counter()
    answers = answers_by_generate(llm, tasks)
    seconds = time.perf_counter() - start
    asked = [(q, truth, len(t.items)) for t in tasks for q, truth in t.qa]
    right, by_kind, by_count = 0, collections.defaultdict(list), collections.defaultdict(list)
    confusions = collections.Counter()
    for (question, truth, count), answer in zip(asked, answers):
        ok = answer == truth
        right += ok
        by_kind[question_kind(question)].append(ok)
        by_count[count].append(ok)
        if not ok:
            confusions[f"{truth} -> {answer}"] += 1
    print(json.dumps({
        "model": args.model or "mmjax.demo_checkpoint()", "dtype": args.dtype, "quantization": args.quantization,
        "scenes": len(tasks), "questions": len(asked),
        "accuracy": round(right / len(asked), 4),
        "by_kind": {k: round(sum(v) / len(v), 4) for k, v in sorted(by_kind.items())},
        "by_shape_count": {str(k): round(sum(v) / len(v), 4) for k, v in sorted(by_count.items())},
        "confusions": dict(confusions.most_common(10)),
        "generate_s": round(seconds, 1), "questions_per_s": round(len(asked) / seconds, 1),
    }, indent=1))


if __name__ == "__main__":
    main()
