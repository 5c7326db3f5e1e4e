"""The benchmark's prefill alone: 8 prompts (a new photo each) through ``mmjax.generate`` with one new token.

The model and prompts are ``generate_vs_transformers.py``'s (LLaVA-1.5, text 512 wide, 8 layers; ~600 tokens
a prompt); the engine has its defaults. One call compiles (and primes the caches), then ``--runs`` calls on
images no call has seen are timed. Run it at two commits, alternating, to compare a change:

    python benchmarks/prefill.py [--runs 4] [--dtype bfloat16] [--checkpoint DIR]

Prints JSON: each run's seconds (sorted), the median, and the prompts' tokens.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=4)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--checkpoint", help="the benchmark checkpoint, if written before (else a temporary one)")
    args = parser.parse_args()
    if args.runs < 1:
        parser.error(f"--runs must be at least 1, got {args.runs}")

    import mmjax
    from generate_vs_transformers import make_checkpoint, prompts

    path = args.checkpoint or make_checkpoint(tempfile.mkdtemp(prefix="mmjax-prefill-"))
    llm = mmjax.load(path, dtype=args.dtype)
    params = mmjax.SamplingParams(temperature=0.0, max_tokens=1, ignore_eos=True)
    first = mmjax.generate(llm, prompts(8), params, use_tqdm=False)
    seconds = []
    for run in range(args.runs):
        start = time.perf_counter()
        mmjax.generate(llm, prompts(8, variant=run + 1), params, use_tqdm=False)
        seconds.append(time.perf_counter() - start)
    print(json.dumps({"dtype": args.dtype, "prompts": 8, "prompt_tokens": [len(o.prompt_token_ids) for o in first],
                      "seconds": sorted(round(s, 3) for s in seconds),
                      "median_s": round(statistics.median(seconds), 3)}, indent=1))


if __name__ == "__main__":
    main()
