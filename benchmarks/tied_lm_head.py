"""A decode step of a model with tied embeddings, its LM head (``hidden @ E.T``) on the CPU kernel or on XLA's
dot, beside the same model untied: the step programs of one workload, each variant in a fresh process.

The model is ``qwen2_5_vl_vs_transformers.py``'s (Qwen2.5-VL-3B's layout scaled down: text 512 wide, 8
layers, vocab 32064, tied embeddings as 3B), the workload 8 text-only chat prompts (the benchmark's
questions; no image, so no vision tower) decoding ``--new-tokens`` tokens greedily with the defaults
(``mmjax.load`` + ``mmjax.generate``, no engine config). Run once to compile, then again with every step
program call timed to completion (``block_until_ready``); the figure is the median of the 8-sequence decode
steps. Variants:

- ``tied_kernel``: the default: the tied head on ``transposed_skinny_matmul_cpu`` (the linear-layer policy's
  ``tied_head_product``);
- ``tied_xla``: the tied head left to XLA's dot (``embed_tokens.attend``), the rest as the default:
  what every tied model ran before the transposed kernel;
- ``untied``: the same checkpoint with ``tie_word_embeddings=False`` (its own ``[512, 32064]`` head, on
  the ``[K, N]`` kernel).

Variants run ``--rounds`` times in turn (the host is shared: the best round of each is printed, and all).

    python benchmarks/tied_lm_head.py [--new-tokens 32] [--rounds 3]
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

from qwen2_5_vl_vs_transformers import QUESTIONS, make_checkpoint  # noqa: E402

VARIANTS = ("tied_kernel", "tied_xla", "untied")
BATCH = 8


def decode_step_ms(path: str, variant: str, new_tokens: int) -> dict[str, float]:
    """In this process: the workload once to compile, then once timed; the median 8-row decode step."""
    import jax
    import numpy as np

    import mmjax
    import mmjax.models.common.decoder as decoder

    if variant == "tied_xla":  # the engine's policy, with the tied head left to XLA's dot
        decoder.tied_head_product = lambda hidden, embedding: jax.lax.dot_general(
            hidden, embedding, (((hidden.ndim - 1,), (1,)), ((), ())))
    llm = mmjax.load(path)
    prompts = [f"<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n" for q in QUESTIONS[:BATCH]]
    params = mmjax.SamplingParams(temperature=0.0, max_tokens=new_tokens, ignore_eos=True)
    mmjax.generate(llm, prompts, params, use_tqdm=False)
    runner = llm.engine().runner
    execute, times = runner.execute, []

    def timed(batch):
        start = time.perf_counter()
        out = jax.block_until_ready(execute(batch))
        if batch.input_ids.shape[-1] == BATCH and not batch.all_logits:  # the 8-sequence decode steps
            times.append(time.perf_counter() - start)
        return out

    runner.execute = timed
    mmjax.generate(llm, [p + " " for p in prompts], params, use_tqdm=False)  # new prompts: a full prefill
    return {"decode_step_ms": round(1e3 * float(np.median(times)), 2), "steps": len(times)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(decode_step_ms(args.checkpoint, args.variant, args.new_tokens)))
        return
    root = tempfile.mkdtemp(prefix="mmjax-tied-head-")
    paths = {"tied": make_checkpoint(f"{root}/tied"), "untied": make_checkpoint(f"{root}/untied", tied=False)}
    rounds: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for _ in range(args.rounds):
        for variant in VARIANTS:
            path = paths["untied" if variant == "untied" else "tied"]
            command = [sys.executable, __file__, "--variant", variant, "--checkpoint", path,
                       "--new-tokens", str(args.new_tokens)]
            out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            rounds[variant].append(json.loads(out.strip().splitlines()[-1])["decode_step_ms"])
    print(json.dumps({"decode_step_ms_best": {v: min(t) for v, t in rounds.items()}, "decode_step_ms_rounds": rounds,
                      "batch": BATCH, "new_tokens": args.new_tokens, "cpu_count": os.cpu_count(),
                      "load_average": os.getloadavg()}, indent=1))


if __name__ == "__main__":
    main()
