"""The CPU attention kernel's own time inside the engine's steps, from a jax.profiler trace.

``step_breakdown.py`` gets attention's cost by subtraction (a second process with attention replaced
by the identity); on a shared 2-core host the two processes' noise is larger than the difference. This
runs ``step_breakdown``'s workload for one sequence (its photo prompt, 64 greedy tokens) once to compile,
then again under ``jax.profiler.trace``, and reads the duration of every call of the attention custom
call (found by its target in XLA's dump of the step programs): the prompt's prefill step (one call a
layer) and the decode steps.

    python benchmarks/attention_in_engine.py --checkpoint DIR [--dtype bfloat16]

Prints JSON: for prefill and decode, the calls, the median and 90th percentile of a call (one layer)
in microseconds, and the milliseconds a step (the sum over its layers; for decode the median step).
"""

from __future__ import annotations

import argparse
import glob
import gzip
import json
import os
import re
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def attention_op_names(dump: str) -> set[str]:
    """Names of the attention custom calls in the step programs (no other custom call may share one)."""
    names, others = set(), set()
    for path in glob.glob(os.path.join(dump, "*jit_run*after_optimizations.txt")):
        for name, target in re.findall(r"%(\S+) = \S+ custom-call\([^\n]*custom_call_target=\"([^\"]+)\"",
                                       open(path).read()):
            (names if target.startswith("mmjax_ragged_paged_attention") else others).add(name)
    if not names or names & others:
        raise RuntimeError(f"cannot tell the attention calls apart in {dump}")
    return names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="reuse a checkpoint built by an earlier run (else one is built)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="mmjax-attention-trace-")
    dump = os.path.join(work, "dump")
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + f" --xla_dump_to={dump} --xla_dump_hlo_as_text"
                               " --xla_dump_hlo_module_re=.*jit_run.*")
    import jax
    import numpy as np

    import mmjax
    from generate_vs_transformers import make_checkpoint, prompts

    path = args.checkpoint or make_checkpoint(os.path.join(work, "checkpoint"))
    llm = mmjax.load(path, dtype=args.dtype)
    layers = llm.model_config.hf_config.text_config.num_hidden_layers
    params = mmjax.SamplingParams(temperature=0.0, max_tokens=64, ignore_eos=True)
    mmjax.generate(llm, prompts(1), params, use_tqdm=False)
    trace_dir = os.path.join(work, "trace")
    with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
        mmjax.generate(llm, prompts(1, variant=1), params, use_tqdm=False)
    names = attention_op_names(dump)
    trace = glob.glob(os.path.join(trace_dir, "**", "*perfetto_trace.json.gz"), recursive=True)[0]
    events = json.load(gzip.open(trace))
    events = events["traceEvents"] if isinstance(events, dict) else events
    calls = [e["dur"] for e in sorted((e for e in events if e.get("ph") == "X" and e.get("name") in names),
                                      key=lambda e: e["ts"])]
    # One sequence: its prompt's prefill is the first step (a call a layer), then a decode step a token.
    report = {"dtype": args.dtype, "layers": layers}
    for kind, durations in (("prefill", calls[:layers]), ("decode", calls[layers:])):
        d = np.asarray(durations)
        steps = d[: len(d) // layers * layers].reshape(-1, layers).sum(axis=1)
        report[kind] = dict(calls=len(d), median_us=round(float(np.median(d)), 1),
                            p90_us=round(float(np.percentile(d, 90)), 1),
                            ms_a_step=round(float(np.median(steps)) / 1e3, 3))
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
