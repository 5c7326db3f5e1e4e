"""``mmjax demo`` with no model: the shipped demo model answers questions about a scene it has never seen.

It draws a new scene of the shapes task, saves it where the user can open it, asks the
three kinds of question through ``mmjax.generate`` (the real engine: paged KV cache,
continuous batching, the caches), and prints each answer next to the truth.
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

#: Where the scene is saved unless ``--scene`` says otherwise (the current directory).
DEFAULT_SCENE_PATH = "mmjax-demo-scene.png"


def demo_scene(rng: np.random.Generator) -> Any:
    """A scene of the task about which all three kinds of question can be asked."""
    from mmjax.training.shapes_task import QUESTION_KINDS, questions, random_scene

    while True:
        scene = random_scene(rng)
        if {q.kind for q in questions(scene)} == set(QUESTION_KINDS):
            return scene


def one_question_of_each_kind(rng: np.random.Generator, scene: Any) -> list[Any]:
    """A count question, a colour question and a shape question about ``scene``, in that order."""
    from mmjax.training.shapes_task import random_question

    return [random_question(rng, scene, kind) for kind in ("count", "color", "shape")]


def describe_scene(scene: Any) -> str:
    """``"a red circle, a blue square"``."""
    return ", ".join(f"{'an' if s.color[0] in 'aeiou' else 'a'} {s.color} {s.kind}" for s in scene.shapes)


def ask_about_images(paths: list[str], asked: list[str], dtype: str = "float32", mesh: Any = None,
                     quantization: str | None = None) -> list[str]:
    """Ask the demo model each question in ``asked`` (default: how many shapes) about each image
    file (the user's own drawings); print and return the answers, image by image."""
    import mmjax
    from mmjax.demo import open_images
    from mmjax.training.shapes_task import PROMPT_TEMPLATE

    asked = asked or ["How many shapes are there?"]
    llm = mmjax.load(mmjax.demo_checkpoint(), dtype=dtype, mesh=mesh, quantization=quantization)
    requests = [{"prompt": PROMPT_TEMPLATE.format(question=q), "multi_modal_data": {"image": image}}
                for image in open_images(paths) for q in asked]
    outputs = mmjax.generate(llm, requests, mmjax.SamplingParams(max_tokens=4, temperature=0.0), use_tqdm=False)
    answers = [o.text.strip() for o in outputs]
    for i, answer in enumerate(answers):
        print(f"  {paths[i // len(asked)]}: {asked[i % len(asked)]} {answer}")
    return answers


def run_shapes_demo(seed: int | None = None, scene_path: str = DEFAULT_SCENE_PATH, side: int = 336,
                    dtype: str = "float32", mesh: Any = None, quantization: str | None = None) -> dict:
    """Draw a scene (from ``seed``, or fresh randomness), save it to ``scene_path``, ask the demo
    model about it, print the answers beside the truth, and return it all as a dict."""
    import mmjax
    from mmjax.demo import describe_layout
    from mmjax.training.shapes_task import draw_scene

    rng = np.random.default_rng(seed)
    scene = demo_scene(rng)
    image = draw_scene(scene, side)
    image.save(scene_path)
    asked = one_question_of_each_kind(rng, scene)
    start = time.perf_counter()
    llm = mmjax.load(mmjax.demo_checkpoint(), dtype=dtype, mesh=mesh, quantization=quantization)
    loaded = time.perf_counter()
    print(f"{'model':>10}: the demo model, a tiny LLaVA-1.5 trained by mmjax on drawn shapes "
          f"(mmjax.demo_checkpoint())")
    print(f"{'scene':>10}: {describe_scene(scene)} -> {os.path.abspath(scene_path)} ({side}x{side})")
    requests = [{"prompt": q.prompt, "multi_modal_data": {"image": image}} for q in asked]
    processed = llm.process(requests[0])
    print(f"{'prompt':>10}: {describe_layout(processed.token_ids, processed.placeholders, llm.tokenizer)!r}")
    engine = llm.engine()
    print(f"{'memory':>10}: {engine.memory.describe()}")
    outputs = mmjax.generate(llm, requests, mmjax.SamplingParams(max_tokens=4, temperature=0.0), use_tqdm=False)
    done = time.perf_counter()
    answers = [o.text.strip() for o in outputs]
    width = max(len(q.text) for q in asked)
    print(f"\n  {'question':<{width}}  {'answer':<8}  {'truth':<8}")
    for q, answer in zip(asked, answers):
        print(f"  {q.text:<{width}}  {answer:<8}  {q.answer:<8}  {'right' if answer == q.answer else 'WRONG'}")
    correct = sum(a == q.answer for q, a in zip(asked, answers))
    print(f"\n{'finished':>10}: {correct} of {len(asked)} right; load {loaded - start:.2f} s, "
          f"three questions (compiles first) {done - loaded:.2f} s; the vision tower ran "
          f"{engine.stats['encoded_items']} time(s) for {len(asked)} questions about one image")
    print(f"{'your turn':>10}: draw shapes of your own and ask: mmjax demo --image my.png "
          f"--question \"What color is the circle?\"")
    return {"scene": describe_scene(scene), "scene_path": os.path.abspath(scene_path),
            "questions": [q.text for q in asked], "answers": answers, "truth": [q.answer for q in asked],
            "correct": correct, "load_s": round(loaded - start, 2), "generate_s": round(done - loaded, 2)}
