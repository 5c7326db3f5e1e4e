"""What batch-invariant numerics cost, and whether they hold on a real-sized model.

    .venv/bin/python benchmarks/batch_invariance.py                                   # the demo model
    .venv/bin/python benchmarks/batch_invariance.py --checkpoint /work/peers/bench-work/checkpoint

The same ``--prompts`` prompts (one image each, ~20 words) decoded greedily for ``--max-tokens`` tokens as one
batch, by the default engine and by ``EngineConfig(batch_invariant=True)``, alternated over ``--rounds`` on
warmed-up engines without prefix or encoder caches (each run prefills and encodes in full; no compilation inside
a timed run, checked): tokens/s, the prefill's seconds and the decode step's milliseconds (the engine's own
stats). Then the mode's guarantee on this model: the prompt logprobs of
``prompt + answer`` through the invariant engine (all prompts in one batch, then in 16-token chunks) against
``mmjax.score`` of the same tokens, bit for bit; and ``score``'s own time. Prints JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time

import numpy as np

import mmjax
from mmjax.engine import count_compilations
from mmjax.training.score_checks import engine_target_logprobs, split_example


def prompts(llm: mmjax.LLM, count: int) -> list[dict]:
    from mmjax.training.shapes_task import PROMPT_TEMPLATE, draw_scene, random_scene

    rng = np.random.default_rng(0)
    questions = ["How many shapes are there, and what colour is the largest one?",
                 "Describe every shape in the picture, one by one, with its colour."]
    return [{"prompt": PROMPT_TEMPLATE.format(question=questions[i % 2]),
             "multi_modal_data": {"image": draw_scene(random_scene(rng), side=640)}} for i in range(count)]


def timed_run(llm: mmjax.LLM, batch: list[dict], config: mmjax.EngineConfig, max_tokens: int) -> dict:
    params = mmjax.SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    engine = llm.engine(config)
    before = dict(engine.stats)
    with count_compilations() as compiled:
        start = time.perf_counter()
        outputs = mmjax.generate(llm, batch, params, engine_config=config, use_tqdm=False)
        seconds = time.perf_counter() - start
    stats = engine.stats
    decode_steps = stats["decode_steps"] - before["decode_steps"]
    return {"tokens_per_s": sum(len(o.outputs[0].token_ids) for o in outputs) / seconds,
            "prefill_s": stats["prefill_step_s"] - before["prefill_step_s"],
            "decode_step_ms": 1000 * (stats["decode_step_s"] - before["decode_step_s"]) / max(decode_steps, 1),
            "compiled": compiled[0], "tokens": [o.outputs[0].token_ids for o in outputs]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=None, help="default: mmjax.demo_checkpoint()")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    llm = mmjax.load(args.checkpoint or mmjax.demo_checkpoint(), dtype=args.dtype)
    batch = prompts(llm, args.prompts)
    # no prefix or encoder cache: each timed run prefills and encodes its prompts in full, as a new batch would
    base = dict(max_num_seqs=args.prompts, enable_prefix_caching=False, encoder_cache_tokens=0)
    configs = {"default": mmjax.EngineConfig(**base),
               "batch_invariant": mmjax.EngineConfig(**base, batch_invariant=True)}
    handles = {name: dataclasses.replace(llm, _engine=[], _mappers={}) for name in configs}  # an engine each
    for name, config in configs.items():
        handles[name].engine(config).warmup(prompt_logprobs=False)
        timed_run(handles[name], batch, config, 2)  # a first run: the processor cache and the kernels' first calls
    runs: dict[str, list[dict]] = {name: [] for name in configs}
    for _ in range(args.rounds):
        for name, config in configs.items():
            runs[name].append(timed_run(handles[name], batch, config, args.max_tokens))
    report = {"checkpoint": args.checkpoint or "demo", "dtype": args.dtype, "prompts": args.prompts,
              "max_tokens": args.max_tokens, "rounds": args.rounds}
    for name, results in runs.items():
        report[name] = {key: statistics.median(r[key] for r in results)
                        for key in ("tokens_per_s", "prefill_s", "decode_step_ms")}
        report[name]["compiled_in_timed_runs"] = sum(r["compiled"] for r in results)
    ours, theirs = report["batch_invariant"], report["default"]
    report["cost"] = {"tokens_per_s_ratio": ours["tokens_per_s"] / theirs["tokens_per_s"],
                      "prefill_ratio": ours["prefill_s"] / theirs["prefill_s"],
                      "decode_step_ratio": ours["decode_step_ms"] / theirs["decode_step_ms"]}
    report["greedy_tokens_equal_to_default"] = sum(
        a == b for a, b in zip(runs["default"][-1]["tokens"], runs["batch_invariant"][-1]["tokens"]))
    report["bits"] = bit_check(llm, batch[:4])
    print(json.dumps(report, indent=2))


def bit_check(llm: mmjax.LLM, batch: list[dict]) -> dict:
    """The invariant engine's prompt logprobs of prompt + answer against ``score``'s, batched and chunked."""
    answers = [" There are two shapes, and the largest one is red.", " A blue circle, then a green square."]
    pairs = [split_example(llm, prompt, answers[i % 2]) for i, prompt in enumerate(batch)]
    wholes, examples = [w for w, _ in pairs], [e for _, e in pairs]
    start = time.perf_counter()
    scored = mmjax.score(llm, examples, batch_size=len(examples))
    score_s = time.perf_counter() - start
    alone = [mmjax.score(llm, [example], batch_size=1)[0] for example in examples]
    result = {"targets": len(examples), "tokens": sum(len(s) for s in scored), "score_s_incl_compile": score_s,
              "score_batched_equals_alone": all(np.array_equal(a, b) for a, b in zip(scored, alone))}
    for name, extra in {"one_batch": {}, "chunks_of_16": {"max_num_batched_tokens": 16}}.items():
        config = mmjax.EngineConfig(max_num_seqs=len(batch), batch_invariant=True, **extra)
        engine = engine_target_logprobs(llm, wholes, examples, config)
        result[f"engine_{name}_equals_score"] = all(np.array_equal(a, b) for a, b in zip(engine, alone))
    default = engine_target_logprobs(llm, wholes, examples, mmjax.EngineConfig(max_num_seqs=len(batch)))
    result["default_engine_max_abs_diff"] = float(max(np.abs(a - b).max() for a, b in zip(default, alone)))
    return result


if __name__ == "__main__":
    main()
