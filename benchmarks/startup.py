"""Start-up to the first answer: ``import mmjax`` + ``mmjax.load`` + the first ``mmjax.generate``, in fresh processes.

The model is ``generate_vs_transformers.py``'s LLaVA-1.5 (text 512 wide, 8 layers, vocab 32064; CLIP 256
wide, 4 layers, 336 px images), with the default ``EngineConfig``; the prompt is one image and a question
(``prompts(1)``), 16 new tokens, greedy. Each of ``--runs`` fresh processes times, on its own clock:

- ``import_s``: ``import mmjax``;
- ``load_s``: ``mmjax.load(path)``;
- ``engine_s``: ``llm.engine()``, which the first ``generate`` would build (KV pages, programs' jit wrappers);
- ``generate_s``: the ``mmjax.generate`` call after it; of it, ``prefill_step_s`` and ``decode_step_s`` from the
  engine's stats (they hold each program's first use: tracing, lowering, and the persistent cache's load or a
  compilation; the prefill step also encodes the image);
- ``first_answer_s``: the three together (``prompts()``' photo, skimage's, is made before and not counted), and
  ``first_answer_cpu_s``, the CPU seconds of all the process' threads meanwhile (less disturbed by other
  work on the host than the wall clock; XLA's threads count each);
- ``programs``: from JAX's monitoring events from ``load`` on: XLA programs compiled or loaded
  (``backend_compile``), of those found in the persistent cache (``cache_hits``) and missed (``cache_misses``),
  and the seconds spent tracing (``trace_s``), lowering to MLIR (``lower_s``), compiling or loading
  (``backend_s``), of which reading the cache (``cache_retrieval_s``);
- and, seen from the parent: ``process_s``, the whole process (the interpreter's start, the photo and the
  exit included), and ``exit_s``, from the answer to the process' end.

The first process may fill the caches: it is reported apart, and the medians are over the others (the warm
start the goal is about). The caches are the user's (``~/.cache/mmjax``) unless ``--fresh-caches``, which
gives this run empty directories of its own (its first process is then a cold start). ``--without torch``
hides packages from the children, as on an install without them: torch is no dependency of mmjax (only
the tests' reference), but transformers imports it wherever it is installed, at a cost measured here.
Last, ``python -X importtime -c "import mmjax"`` in one more process: its total, and the packages whose
modules took longest (each module's own time, summed by top-level package).

    python benchmarks/startup.py [--runs 6] [--fresh-caches] [--without torch] [--checkpoint DIR] [--dtype bfloat16]

Prints JSON. Time it with nothing else running, each run in its own session at nice -20
(docs: /work/shared/PEERS.md, "Timing on these machines").
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

NEW_TOKENS = 16
TIMED = ("import_s", "load_s", "engine_s", "generate_s", "prefill_step_s", "decode_step_s", "first_answer_s",
         "first_answer_cpu_s", "process_s", "exit_s")


def first_answer_here(path: str, dtype: str = "float32") -> dict:
    """Import, load and the first generate in this (fresh) process; the seconds of each."""
    clock = [(time.perf_counter(), time.process_time())]  # wall and CPU seconds (every thread's) at each mark
    import mmjax

    clock.append((time.perf_counter(), time.process_time()))
    from generate_vs_transformers import prompts

    prompt = prompts(1)[0]
    programs = _listen_to_jax()
    clock.append((time.perf_counter(), time.process_time()))
    llm = mmjax.load(path, dtype=dtype)
    clock.append((time.perf_counter(), time.process_time()))
    engine = llm.engine()
    clock.append((time.perf_counter(), time.process_time()))
    params = mmjax.SamplingParams(temperature=0.0, max_tokens=NEW_TOKENS, ignore_eos=True)
    out = mmjax.generate(llm, prompt, params, use_tqdm=False)
    clock.append((time.perf_counter(), time.process_time()))
    (start, start_cpu), (imported, imported_cpu), (load_start, load_start_cpu), *_ = clock
    (loaded, _), (built, _), (done, done_cpu) = clock[3:]
    stats = engine.stats
    return {
        "import_s": imported - start, "load_s": loaded - load_start, "engine_s": built - loaded,
        "generate_s": done - built, "prefill_step_s": stats["prefill_step_s"], "decode_step_s": stats["decode_step_s"],
        "first_answer_s": (imported - start) + (done - load_start),
        "first_answer_cpu_s": (imported_cpu - start_cpu) + (done_cpu - load_start_cpu),
        "steps": [stats["prefill_steps"], stats["decode_steps"]], "tokens": len(out[0].outputs[0].token_ids),
        "programs": programs,
    }


def _listen_to_jax() -> dict:
    """Counts and seconds of JAX's compilation events from now on (filled in as they happen)."""
    from jax import monitoring

    counts = {"backend_compile": 0, "cache_hits": 0, "cache_misses": 0, "trace_s": 0.0, "lower_s": 0.0,
              "backend_s": 0.0, "cache_retrieval_s": 0.0}
    durations = {"/jax/core/compile/jaxpr_trace_duration": "trace_s",
                 "/jax/core/compile/jaxpr_to_mlir_module_duration": "lower_s",
                 "/jax/core/compile/backend_compile_duration": "backend_s",
                 "/jax/compilation_cache/cache_retrieval_time_sec": "cache_retrieval_s"}

    def on_duration(event: str, seconds: float, **_) -> None:
        if event in durations:
            counts[durations[event]] += seconds
        if event == "/jax/core/compile/backend_compile_duration":
            counts["backend_compile"] += 1

    def on_event(event: str, **_) -> None:
        for name in ("cache_hits", "cache_misses"):
            if event == f"/jax/compilation_cache/{name}":
                counts[name] += 1

    monitoring.register_event_duration_secs_listener(on_duration)
    monitoring.register_event_listener(on_event)
    return counts


def import_time_offenders(env: dict[str, str], hidden: list[str], top: int = 15) -> dict:
    """``python -X importtime -c "import mmjax"``: its total, and the packages whose modules took longest
    (each module's own time, summed by top-level package: every microsecond is counted once)."""
    code = "".join(f"import sys; sys.modules[{name!r}] = None; " for name in hidden) + "import mmjax"
    err = subprocess.run([sys.executable, "-X", "importtime", "-c", code], env=env, check=True,
                         capture_output=True, text=True).stderr
    packages: dict[str, float] = {}
    total = 0.0
    for line in err.splitlines():
        parts = line.removeprefix("import time:").split("|")
        if not line.startswith("import time:") or len(parts) != 3 or not parts[0].strip().isdigit():
            continue
        name = parts[2].strip()
        packages[name.split(".")[0]] = packages.get(name.split(".")[0], 0.0) + int(parts[0]) / 1e6
        if name == "mmjax":
            total = int(parts[1]) / 1e6
    ranked = sorted(packages.items(), key=lambda kv: -kv[1])[:top]
    return {"import_mmjax_s": round(total, 3), "self_s_by_package": {k: round(v, 3) for k, v in ranked}}


def in_fresh_process(path: str, env: dict[str, str], hidden: list[str], dtype: str = "float32") -> dict:
    start = time.perf_counter()
    out = subprocess.run([sys.executable, __file__, "--child", path, dtype, *hidden], env=env, check=True,
                         capture_output=True, text=True).stdout
    end, finished = time.perf_counter(), time.time()
    result = json.loads(out.strip().splitlines()[-1])
    result["process_s"], result["exit_s"] = end - start, finished - result.pop("answered_at")
    return result


def _rounded(run: dict) -> dict:
    return {k: round(v, 3) if isinstance(v, float) else (_rounded(v) if isinstance(v, dict) else v)
            for k, v in run.items()}


def main() -> None:
    if len(sys.argv) >= 4 and sys.argv[1] == "--child":
        for name in sys.argv[4:]:  # hidden: importing them fails, as where they are not installed
            sys.modules[name] = None
        result = first_answer_here(sys.argv[2], sys.argv[3])
        print(json.dumps({**result, "answered_at": time.time()}), flush=True)
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=6, help="fresh processes (the first one may fill the caches)")
    parser.add_argument("--fresh-caches", action="store_true", help="empty cache directories of this run's own")
    parser.add_argument("--without", nargs="*", default=[], metavar="PACKAGE",
                        help="packages the children cannot import (e.g. torch), as on an install without them")
    parser.add_argument("--checkpoint", help="the benchmark checkpoint, if written before (else a temporary one)")
    parser.add_argument("--dtype", default="float32", help="mmjax.load's dtype")
    args = parser.parse_args()
    from generate_vs_transformers import make_checkpoint
    from warmup import new_caches

    path = args.checkpoint or make_checkpoint(tempfile.mkdtemp(prefix="mmjax-startup-"))
    env = {**os.environ, **(new_caches() if args.fresh_caches else {})}
    runs = [in_fresh_process(path, env, args.without, args.dtype) for _ in range(args.runs)]
    warm = runs[1:] or runs
    medians = {k: round(statistics.median(r[k] for r in warm), 3) for k in TIMED}
    medians["programs"] = {k: round(statistics.median(r["programs"][k] for r in warm), 3) for k in warm[0]["programs"]}
    print(json.dumps({
        "new_tokens": NEW_TOKENS, "dtype": args.dtype, "without": args.without,
        "warm_median": medians,
        "first_process": _rounded(runs[0]),
        "warm_processes": [_rounded(r) for r in warm],
        "importtime": import_time_offenders(env, args.without),
    }, indent=1))


if __name__ == "__main__":
    main()
