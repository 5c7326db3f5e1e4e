"""Which dtype to pick on a CPU: float32, bfloat16 and int8 weights side by side on the LLaVA benchmark model.

The model and prompts are ``generate_vs_transformers.py``'s (a random LLaVA-1.5 with text hidden 512,
8 layers, vocab 32064; CLIP 256 wide; 576 image tokens; 8 photos with ~20-word questions). Each variant
runs in its own process, the variants alternated over ``--rounds`` rounds (the best round kept):

- ``float32``, ``bfloat16``: ``mmjax.load(path, dtype=...)``;
- ``int8``, ``bfloat16+int8``: ``quantization="int8"`` (the decoder's projections int8, per-column scales).

Printed (JSON), per variant: 8 prompts x 64 tokens (tokens/s, prefill s, decode ms a step), one
sequence (time to first token, decode ms a token), the bytes a one-sequence decode step must read
(the decoder's weights as stored, the LM head, the KV of its context) and that step's time as a
multiple of those bytes over the read bandwidth measured in the same run (the memory limit: 1.0),
and how many of the 8 greedy outputs equal float32's, token for token.

    python benchmarks/dtypes.py [--rounds 2] [--checkpoint DIR] [--variants float32,int8]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import generate_vs_transformers as llava_bench  # noqa: E402

VARIANTS = {"float32": ("float32", None), "bfloat16": ("bfloat16", None), "int8": ("float32", "int8"),
            "bfloat16+int8": ("bfloat16", "int8")}
BATCH, NEW_TOKENS = 8, 64


def decode_read_bytes(llm, context: int) -> int:
    """Bytes one sequence's decode step reads: every decoder parameter as stored except the token
    embedding (one row is gathered; a tied head reads it whole, so then it counts), plus the KV of
    ``context`` tokens in every layer."""
    import numpy as np
    from flax import nnx

    text = llm.hf_config.text_config
    total = 0
    for path, leaf in nnx.to_flat_state(llm.state):
        name = "/".join(map(str, path))
        if name.startswith("language_model/") and (
                "embed_tokens" not in name or getattr(text, "tie_word_embeddings", False)):
            value = leaf.get_value()
            total += int(np.prod(value.shape)) * value.dtype.itemsize
    heads = text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    kv_bytes = 2 * text.num_key_value_heads * head_dim * np.dtype(llm.dtype).itemsize
    return total + context * text.num_hidden_layers * kv_bytes


def run_variant(path: str, variant: str) -> dict:
    """In this process: load, warm up, then time 8 x 64 and one sequence x 64."""
    import mmjax

    dtype, quantization = VARIANTS[variant]
    start = time.perf_counter()
    llm = mmjax.load(path, dtype=dtype, quantization=quantization)
    load_s = time.perf_counter() - start
    params = mmjax.SamplingParams(temperature=0.0, max_tokens=NEW_TOKENS, ignore_eos=True)
    mmjax.generate(llm, llava_bench.prompts(BATCH), params, use_tqdm=False)  # compiles the workload's steps
    mmjax.generate(llm, llava_bench.prompts(1, 7), params, use_tqdm=False)  # and one sequence's
    engine = llm.engine()

    def timed(batch: list) -> tuple[dict, list]:
        for key in ("prefill_step_s", "decode_step_s", "prefill_steps", "decode_steps"):
            engine.stats[key] = 0
        begin, first, outputs = time.perf_counter(), None, {}
        for out in mmjax.generate(llm, batch, params, stream=True):
            first = first or time.perf_counter() - begin
            outputs[out.request_id] = out
        seconds = time.perf_counter() - begin
        stats = dict(engine.stats)
        ordered = sorted((o for o in outputs.values() if o.finished), key=lambda o: int(o.request_id))
        return {"seconds": seconds, "ttft_s": first, "prefill_s": stats["prefill_step_s"],
                "decode_ms_per_step": 1e3 * stats["decode_step_s"] / max(stats["decode_steps"], 1),
                "tokens_per_s": len(batch) * NEW_TOKENS / seconds}, [list(o.token_ids) for o in ordered]

    batch, tokens = timed(llava_bench.prompts(BATCH, 1))
    single_prompt = llava_bench.prompts(1, 2)
    single, _ = timed(single_prompt)
    context = len(llm.process(single_prompt[0]).token_ids) + NEW_TOKENS // 2
    return {"load_s": load_s, "batch": batch, "single": single, "token_ids": tokens,
            "decode_read_bytes": decode_read_bytes(llm, context)}


def read_bandwidth() -> float:
    """GB/s of a streaming float32 sum over 256 MiB (past the caches), best of 10."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    big = jnp.asarray(np.ones(64 * 2**20, np.float32))
    read = jax.jit(jnp.sum)
    read(big).block_until_ready()
    best = float("inf")
    for _ in range(10):
        start = time.perf_counter()
        read(big).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return big.nbytes / best / 1e9


def in_process(path: str, variant: str) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--variant", variant, "--checkpoint", path],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"variant {variant} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--checkpoint", help="reuse a checkpoint built by an earlier run")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {list(VARIANTS)}")
    parser.add_argument("--variant", choices=list(VARIANTS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args.checkpoint, args.variant)))
        return
    variants = args.variants.split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; expected some of {list(VARIANTS)}")
    path = args.checkpoint or llava_bench.make_checkpoint(tempfile.mkdtemp(prefix="mmjax-bench-"))
    bandwidth = read_bandwidth()
    runs: dict[str, list[dict]] = {v: [] for v in variants}
    for _ in range(args.rounds):
        for variant in variants:  # alternated: a slow spell of the host falls on every variant alike
            runs[variant].append(in_process(path, variant))
    reference = runs.get("float32", [None])[0]
    report = {"config": {"batch": BATCH, "new_tokens": NEW_TOKENS, "rounds": args.rounds, "greedy": True,
                         "text": llava_bench.TEXT, "vision": llava_bench.VISION, "cpu_count": os.cpu_count()},
              "read_gb_per_s": round(bandwidth, 2)}
    for variant, results in runs.items():
        batch = max((r["batch"] for r in results), key=lambda b: b["tokens_per_s"])
        single = min((r["single"] for r in results), key=lambda s: s["decode_ms_per_step"])
        limit_ms = 1e3 * results[0]["decode_read_bytes"] / (bandwidth * 1e9)
        entry = {"batch_8x64": {k: round(v, 4) for k, v in batch.items()},
                 "one_sequence": {k: round(v, 4) for k, v in single.items() if k != "tokens_per_s"},
                 "decode_read_mb": round(results[0]["decode_read_bytes"] / 1e6, 2),
                 "one_sequence_decode_vs_memory_limit": round(single["decode_ms_per_step"] / limit_ms, 2),
                 "load_s": round(min(r["load_s"] for r in results), 2)}
        if reference is not None:
            same = sum(a == b for a, b in zip(results[0]["token_ids"], reference["token_ids"]))
            entry["greedy_outputs_equal_to_float32"] = f"{same}/{BATCH}"
        report[variant] = entry
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
