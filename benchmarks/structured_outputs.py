"""Structured outputs: what a constraint costs a batch, and what it does to the demo model's answers.

    .venv/bin/python benchmarks/structured_outputs.py                      # the demo model
    .venv/bin/python benchmarks/structured_outputs.py --checkpoint DIR     # e.g. the peers' benchmark LLaVA
    .venv/bin/python benchmarks/structured_outputs.py --scenes 0           # speed only

Speed: the same 8 prompts (one image each) decoded greedily as a batch, free and under a JSON schema,
then half and half, alternated over ``--rounds`` on one warmed-up engine (no compilation inside a
timed run, checked). Reports tokens/s and the decode step's milliseconds (the engine's own stats), and
the host time spent filling masks (llguidance) per step that had constrained rows. The masks are filled
while the device runs the step (dispatch is asynchronous), so the step's cost is below the sum.

Accuracy (demo model only): every question about ``--scenes`` held-out scenes (``shape_scenes``, seed
1000), greedy, free-form against (a) a choice among the task's answers and (b) the question asked for
JSON (``JSON_SUFFIX``) under the schema ``{"count": integer}``, ``{"color": enum}`` or ``{"shape":
enum}``. ``--model DIR`` measures another build of the demo model. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import mmjax
import mmjax.structured.masks as masks_module
from mmjax.engine import count_compilations

SCHEMA = {"type": "object", "required": ["objects", "count"],
          "properties": {"objects": {"type": "array", "minItems": 1, "maxItems": 6,
                                     "items": {"type": "object", "required": ["shape", "color", "size"],
                                               "properties": {"shape": {"enum": ["circle", "square", "triangle"]},
                                                              "color": {"type": "string", "maxLength": 12},
                                                              "size": {"type": "number", "minimum": 0,
                                                                       "maximum": 1}}}},
                         "count": {"type": "integer", "minimum": 0, "maximum": 99}}}


class Clock:
    """Wall time of the calls of ``owner.name`` (e.g. ``fill_masks``: the host's share of a constrained step)."""

    def __init__(self, owner, name: str):
        self.calls, self.seconds, self._real = 0, 0.0, getattr(owner, name)
        setattr(owner, name, self._timed)

    def _timed(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return self._real(*args, **kwargs)
        finally:
            self.calls += 1
            self.seconds += time.perf_counter() - start


def speed(llm, rounds: int, max_tokens: int) -> dict:
    from mmjax.training.shapes_task import PROMPT_TEMPLATE, draw_scene, random_scene

    import numpy as np

    rng = np.random.default_rng(0)
    prompts = [{"prompt": PROMPT_TEMPLATE.format(question="Describe the shapes."),
                "multi_modal_data": {"image": draw_scene(random_scene(rng), 224)}} for _ in range(8)]
    config = mmjax.EngineConfig(max_num_seqs=8)
    engine = llm.engine(config)
    engine.warmup(prompt_logprobs=False)
    free = mmjax.SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    json_params = mmjax.SamplingParams(temperature=0.0, max_tokens=max_tokens,
                                       structured_outputs=mmjax.StructuredOutputsParams(json=SCHEMA))
    batches = {"free": [free] * 8, "json": [json_params] * 8, "half_json": [free, json_params] * 4}
    clock = Clock(masks_module, "fill_masks")
    sampler = Clock(engine.runner, "sample")  # the sampler program: skipped by steps of plain greedy rows
    runs: dict[str, list[dict]] = {name: [] for name in batches}
    for _ in range(rounds):
        for name, params in batches.items():
            engine.reset_caches()
            before = dict(engine.stats)
            calls, mask_s = clock.calls, clock.seconds
            sampler_s = sampler.seconds
            with count_compilations() as compiled:
                start = time.perf_counter()
                outputs = mmjax.generate(llm, prompts, params, engine_config=config, use_tqdm=False)
                seconds = time.perf_counter() - start
            tokens = sum(len(o.token_ids) for o in outputs)
            steps = engine.stats["decode_steps"] - before["decode_steps"]
            runs[name].append({
                "tokens": tokens, "tokens_per_s": tokens / seconds, "compilations": compiled[0],
                "decode_step_ms": 1e3 * (engine.stats["decode_step_s"] - before["decode_step_s"]) / max(steps, 1),
                "mask_fill_ms_per_step": 1e3 * (clock.seconds - mask_s) / max(clock.calls - calls, 1),
                "sampler_ms_per_step": 1e3 * (sampler.seconds - sampler_s) / max(engine.stats["steps"]
                                                                               - before["steps"], 1),
                "finish_reasons": sorted({o.outputs[0].finish_reason for o in outputs}),
            })
    out = {name: {key: (statistics.median(r[key] for r in rs) if isinstance(rs[0][key], float) else rs[-1][key])
                  for key in rs[0]} for name, rs in runs.items()}
    out["ratio_json_over_free"] = {"tokens_per_s": out["json"]["tokens_per_s"] / out["free"]["tokens_per_s"],
                                   "decode_step_ms": out["json"]["decode_step_ms"] / out["free"]["decode_step_ms"]}
    return out


def accuracy(llm, scenes: int) -> dict:
    from mmjax.testing.shape_scenes import prompt_for, task_images
    from mmjax.training.shapes_task import COLORS, JSON_SUFFIX, SHAPES

    asked = [(t, q, a) for t in task_images(scenes, 1000) for q, a in t.qa]

    def kind(question: str) -> str:
        return "count" if question.startswith("How many") else "color" if "color" in question else "shape"

    def value_schema(question: str) -> dict:
        return {"count": {"type": "integer", "minimum": 1, "maximum": 9}, "color": {"enum": list(COLORS)},
                "shape": {"enum": list(SHAPES)}}[kind(question)]

    def options(question: str) -> list[str]:
        return {"count": [str(n) for n in range(1, 10)], "color": list(COLORS), "shape": list(SHAPES)}[kind(question)]

    S = mmjax.StructuredOutputsParams
    variants = {  # name: (question suffix, constraint)
        "free": ("", lambda q: None),
        # the task's answers as the model writes them: a space, then the word
        "choice": ("", lambda q: S(choice=[" " + o for o in options(q)])),
        # {"count": integer} / {"color": enum} / {"shape": enum}, asked as the model was taught JSON answers
        "json": (JSON_SUFFIX, lambda q: S(json={"type": "object", "properties": {kind(q): value_schema(q)},
                                                "required": [kind(q)]})),
    }
    out: dict = {"questions": len(asked)}
    for name, (suffix, constraint) in variants.items():
        prompts = [{"prompt": prompt_for(q + suffix), "multi_modal_data": {"image": t.image}} for t, q, _ in asked]
        params = [mmjax.SamplingParams(temperature=0.0, max_tokens=4 if name == "free" else 64,
                                       structured_outputs=constraint(q)) for _, q, _ in asked]
        outputs = mmjax.generate(llm, prompts, params, use_tqdm=False)
        texts = [o.outputs[0].text for o in outputs]
        answers = [_json_answer(t, kind(q)) if name == "json" else t.strip() for t, (_, q, _) in zip(texts, asked)]
        out[name] = {"accuracy": sum(a == truth for a, (_, _, truth) in zip(answers, asked)) / len(asked),
                     "stopped": sum(o.outputs[0].finish_reason == "stop" for o in outputs) / len(asked),
                     "mean_tokens": statistics.mean(len(o.token_ids) for o in outputs), "example": texts[0]}
    return out


def _json_answer(text: str, key: str) -> str | None:
    try:
        return str(json.loads(text)[key])
    except ValueError:  # cut by max_tokens
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="a checkpoint directory (default: the demo model)")
    parser.add_argument("--model", help="another build of the demo model (accuracy is measured on it)")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--scenes", type=int, default=100, help="held-out scenes for accuracy (demo model only)")
    parser.add_argument("--speed", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args()
    llm = mmjax.load(args.checkpoint or args.model or mmjax.demo_checkpoint(), dtype=args.dtype)
    result = {"model": args.checkpoint or "demo", "dtype": args.dtype, "vocab_size": len(llm.tokenizer)}
    if args.speed:
        result["speed"] = speed(llm, args.rounds, args.max_tokens)
    if args.scenes and not args.checkpoint:
        result["accuracy"] = accuracy(llm, args.scenes)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
