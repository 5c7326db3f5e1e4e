"""Where the default path's time goes on the speed benchmark's workload: encoder, prefill steps, decode
steps, sampler (or, when every request is plain greedy, fetching the tokens the step computed), host;
and how much of each step is attention.

The workload is ``generate_vs_transformers.py``'s (its random LLaVA-1.5, 8 prompts of a new photo each,
64 new tokens, greedy, ``mmjax.load`` + ``mmjax.generate`` with no engine config). Each device call is
timed to completion (``block_until_ready``), so the parts add up to the step; the host's share is what
is left of a step. The same run is then repeated in a fresh process with the paged attention replaced
by the identity (the query comes out as the output; KV pages are still written): the difference per
step kind is what attention costs. That second run's tokens are meaningless; only its times are used.

    python benchmarks/step_breakdown.py [--batch 1] [--dtype bfloat16] [--quantization int8]

``--batch 1`` breaks down one sequence's steps (the notebook user's case); ``--dtype`` and ``--quantization``
are ``mmjax.load``'s.

Prints JSON: for each part, calls, seconds in all and the median milliseconds a call, with and without
attention, and attention's seconds per step kind.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from generate_vs_transformers import make_checkpoint, prompts  # noqa: E402


def timed_parts(path: str, without_attention: bool, batch: int = 8, dtype: str = "float32",
                quantization: str | None = None) -> dict[str, dict[str, float]]:
    """Run the workload once to compile, then once on new images with every device call timed."""
    import jax
    import numpy as np

    import mmjax

    if without_attention:
        import mmjax.attention.dispatch as dispatch

        dispatch.paged_attention = lambda q, pages, metadata, **options: q
    llm = mmjax.load(path, dtype=dtype, quantization=quantization)
    params = mmjax.SamplingParams(temperature=0.0, max_tokens=64, ignore_eos=True)
    mmjax.generate(llm, prompts(batch), params, use_tqdm=False)
    engine = llm.engine()
    runner = engine.runner
    times: dict[str, list[float]] = collections.defaultdict(list)

    def timed(name_of, call):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            out = jax.block_until_ready(call(*args, **kwargs))
            if name_of == "encoder":
                jax.block_until_ready(runner.arena(0))
            times[name_of if isinstance(name_of, str) else name_of(*args)].append(time.perf_counter() - start)
            return out
        return wrapper

    step_kind = lambda batch: f"step_T{batch.input_ids.shape[-1]}"  # noqa: E731
    runner.execute = timed(step_kind, runner.execute)
    runner.encode = timed("encoder", runner.encode)
    runner.sample = timed("sampler", runner.sample)
    runner.fetch_greedy_tokens = timed("greedy_tokens", runner.fetch_greedy_tokens)
    engine._step = timed("whole_step", engine._step)
    mmjax.generate(llm, prompts(batch, variant=1), params, use_tqdm=False)
    return {name: {"calls": len(t), "seconds": round(sum(t), 3), "median_ms": round(1e3 * float(np.median(t)), 2)}
            for name, t in sorted(times.items())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="reuse a checkpoint built by an earlier run")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--quantization", choices=["int8"])
    parser.add_argument("--without-attention", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    options = dict(batch=args.batch, dtype=args.dtype, quantization=args.quantization)
    if args.without_attention:
        print(json.dumps(timed_parts(args.checkpoint, without_attention=True, **options)))
        return
    path = args.checkpoint or make_checkpoint(tempfile.mkdtemp(prefix="mmjax-breakdown-"))
    with_attention = timed_parts(path, without_attention=False, **options)
    command = [sys.executable, __file__, "--checkpoint", path, "--without-attention", "--batch", str(args.batch),
               "--dtype", args.dtype] + (["--quantization", args.quantization] if args.quantization else [])
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    without = json.loads(out.strip().splitlines()[-1])
    attention = {name: round(part["seconds"] - without[name]["seconds"], 3)
                 for name, part in with_attention.items() if name.startswith("step_T") and name in without}
    whole = with_attention["whole_step"]["seconds"]
    device = sum(p["seconds"] for name, p in with_attention.items() if name != "whole_step")
    print(json.dumps({"with_attention": with_attention, "without_attention": without,
                      "attention_seconds_by_step_kind": attention,
                      "attention_share_of_steps": round(sum(attention.values()) / whole, 3),
                      "host_seconds": round(whole - device, 3)}, indent=1))


if __name__ == "__main__":
    main()
