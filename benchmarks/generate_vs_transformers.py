"""mmjax.generate with its defaults vs transformers' PyTorch generate: same checkpoint, same run, same host.

The configuration: a random LLaVA-1.5 with text hidden 512, 8 layers, 8 heads,
MLP 1376, vocab 32064; CLIP hidden 256, 4 layers, 336/14 images (576 image
tokens); 8 prompts of one photo (640x480 and others) and ~20 words; 64 new
tokens; float32; greedy. mmjax runs exactly as a new user would: ``mmjax.load``
then ``mmjax.generate`` with no engine config.

Printed (JSON), for both sides: tokens/s, time to first token, prefill seconds,
decode ms/step, and the first call (load + first generate) in a fresh process
— for mmjax once with an empty compilation cache and once with the cache the
first process wrote. The machine's limits are measured in the same run (a
float32 ``[2048x512]·[512x1376]`` matmul in XLA and in PyTorch; a streaming
read of 256 MiB; the rate a decode-shaped ``[batch, 512]·[512, 32064]`` product
streams its weights in XLA, in PyTorch and on mmjax's CPU matmul kernel) and
each side's prefill GFLOP/s and decode GB/s are given as fractions of them. Greedy outputs must be identical,
token for token.

    python benchmarks/generate_vs_transformers.py [--batch 8] [--new-tokens 64] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

QUESTIONS = [
    "What is shown in this image? Describe the picture in detail.",
    "How many people are in the photo and what are they doing?",
    "What animal is this, and where is it sitting?",
    "Compare the colors on the left and on the right.",
    "Is this photo taken at night? Explain your answer.",
    "What is the astronaut holding in her hands?",
    "Describe the camera, the coffee cup and the rocket.",
    "Tell me which objects are near the red sofa.",
]
TEXT = dict(hidden=512, layers=8, heads=8, kv_heads=8, mlp=1376, vocab=32064)
VISION = dict(hidden=256, layers=4, mlp=1024, image=336, patch=14)


def make_checkpoint(path: str) -> str:
    from mmjax.testing.random_llava import make_random_llava_checkpoint

    return make_random_llava_checkpoint(
        path, image_size=VISION["image"], patch_size=VISION["patch"], vision_hidden=VISION["hidden"],
        text_hidden=TEXT["hidden"], num_layers=TEXT["layers"], vocab_size=TEXT["vocab"], seed=0,
        text_config={"num_attention_heads": TEXT["heads"], "num_key_value_heads": TEXT["kv_heads"],
                     "intermediate_size": TEXT["mlp"]},
        vision_config={"num_hidden_layers": VISION["layers"], "num_attention_heads": 8,
                       "intermediate_size": VISION["mlp"]},
    )


def prompts(batch: int, variant: int = 0) -> list[dict]:
    """``batch`` prompts of a photo and a question each. Every prompt's photo differs from the
    others' in a pixel, and each ``variant`` changes another: new content to mmjax's caches
    (content hashes, encoder cache, prefix pages), so a timed run does all the work of a batch
    of new images, as transformers does every time."""
    import numpy as np
    from PIL import Image
    from skimage import data

    photos = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket()]
    out = []
    for i in range(batch):
        pixels = np.array(photos[i % len(photos)])
        pixels[0, 0, 0] = (int(pixels[0, 0, 0]) + variant) % 256
        pixels[0, 1, 0] = (int(pixels[0, 1, 0]) + i) % 256
        out.append({"prompt": f"USER: <image>\n{QUESTIONS[i % len(QUESTIONS)]} ASSISTANT:",
                    "multi_modal_data": {"image": Image.fromarray(pixels)}})
    return out


# -- the work, counted -----------------------------------------------------------------


def prefill_flop(prompt_lens: list[int]) -> dict[str, float]:
    """FLOPs of prefilling prompts of these lengths (multiply-adds count 2), by part."""
    d, f, v, layers = TEXT["hidden"], TEXT["mlp"], TEXT["vocab"], TEXT["layers"]
    kv_width = d * TEXT["kv_heads"] // TEXT["heads"]
    layer_params = d * d * 2 + d * kv_width * 2 + 3 * d * f
    tokens = sum(prompt_lens)
    decoder = 2 * tokens * layer_params * layers + 2 * len(prompt_lens) * d * v  # + the LM head on last tokens
    attention = sum(4 * d * n * (n + 1) / 2 for n in prompt_lens) * layers  # causal QK^T and PV
    n = (VISION["image"] // VISION["patch"]) ** 2 + 1
    e = VISION["hidden"]
    vision_layer = 2 * n * (4 * e * e + 2 * e * VISION["mlp"]) + 4 * e * n * n
    # every tower layer (the feature layer is the penultimate; both sides run them all), then the projector
    vision = len(prompt_lens) * (VISION["layers"] * vision_layer + 2 * (n - 1) * (e * d + d * d))
    return {"decoder": decoder, "attention": attention, "vision": vision, "total": decoder + attention + vision}


def decode_bytes_per_step(contexts: list[int], bytes_per_value: int = 4) -> float:
    """Bytes a decode step must read: every decoder weight and the LM head once, and each sequence's K/V."""
    d, f, v, layers = TEXT["hidden"], TEXT["mlp"], TEXT["vocab"], TEXT["layers"]
    kv_width = d * TEXT["kv_heads"] // TEXT["heads"]
    weights = layers * (d * d * 2 + d * kv_width * 2 + 3 * d * f + 2 * d) + d * v + d
    kv = sum(contexts) * layers * 2 * kv_width
    return (weights + kv) * bytes_per_value


def machine_limits(batch: int) -> dict[str, float]:
    """This host's limits, measured now (float32): the matmul rate (XLA and PyTorch), the streaming-read
    bandwidth, and the rate at which a decode-shaped product streams its weights: ``[batch, 512]`` times
    the LM head's ``[512, 32064]`` (66 MB, past the caches), in XLA with the engine's options, in
    PyTorch, and on mmjax's CPU matmul kernel (what the engine's decode steps use on CPU)."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch

    def best(fn, repeats: int = 10) -> float:
        fn()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return min(times)

    m, k, n = 2048, 512, 1376
    a, b = jnp.ones((m, k), jnp.float32), jnp.ones((k, n), jnp.float32)
    matmul = jax.jit(lambda a, b: a @ b)
    xla_s = best(lambda: matmul(a, b).block_until_ready())
    ta, tb = torch.ones(m, k), torch.ones(k, n)
    torch_s = best(lambda: ta @ tb)
    big = jnp.asarray(np.ones(64 * 2**20, np.float32))  # 256 MiB, far past the caches
    read = jax.jit(jnp.sum)
    read_s = best(lambda: read(big).block_until_ready())
    from mmjax.engine.compilation import compiler_options

    x, head = jnp.ones((batch, TEXT["hidden"]), jnp.float32), jnp.ones((TEXT["hidden"], TEXT["vocab"]), jnp.float32)
    skinny = jax.jit(lambda x, w: x @ w, compiler_options=compiler_options())
    skinny_xla_s = best(lambda: skinny(x, head).block_until_ready())
    tx, thead = torch.ones(batch, TEXT["hidden"]), torch.ones(TEXT["vocab"], TEXT["hidden"])
    skinny_torch_s = best(lambda: torch.nn.functional.linear(tx, thead))
    from mmjax.kernels_cpu import matmul_unavailable, skinny_matmul_cpu

    skinny_kernel = jax.jit(skinny_matmul_cpu)
    skinny_kernel_s = (best(lambda: skinny_kernel(x, head).block_until_ready())
                       if matmul_unavailable(jnp.float32) is None else float("inf"))
    return {"matmul_gflops_xla": 2 * m * k * n / xla_s / 1e9, "matmul_gflops_torch": 2 * m * k * n / torch_s / 1e9,
            "read_gb_per_s": big.nbytes / read_s / 1e9,
            "decode_matmul_gb_per_s_xla": head.nbytes / skinny_xla_s / 1e9,
            "decode_matmul_gb_per_s_torch": head.nbytes / skinny_torch_s / 1e9,
            "decode_matmul_gb_per_s_mmjax_kernel": head.nbytes / skinny_kernel_s / 1e9}


# -- the two sides ---------------------------------------------------------------------


def run_mmjax(path: str, size: int, new_tokens: int, repeats: int) -> dict:
    """The defaults, warmed up on one batch, then timed on ``repeats`` batches it has not seen
    (``prompts`` variants 1..repeats; the last one's outputs are returned)."""
    import mmjax

    llm = mmjax.load(path)
    params = mmjax.SamplingParams(temperature=0.0, max_tokens=new_tokens, ignore_eos=True)
    mmjax.generate(llm, prompts(size), params, use_tqdm=False)  # compiles what the workload needs
    engine = llm.engine()
    runs = []
    for variant in range(1, repeats + 1):
        batch = prompts(size, variant)
        for key in ("prefill_step_s", "decode_step_s", "prefill_steps", "decode_steps"):
            engine.stats[key] = 0
        start = time.perf_counter()
        first = None
        outputs = {}
        for out in mmjax.generate(llm, batch, params, stream=True):
            first = first or time.perf_counter() - start
            outputs[out.request_id] = out
        seconds = time.perf_counter() - start
        stats = dict(engine.stats)
        runs.append({"seconds": seconds, "ttft_s": first, "prefill_s": stats["prefill_step_s"],
                     "decode_ms_per_step": 1e3 * stats["decode_step_s"] / max(stats["decode_steps"], 1),
                     "prefill_steps": stats["prefill_steps"], "decode_steps": stats["decode_steps"]})
    done = [o for o in outputs.values() if o.finished]
    assert len(done) == len(batch) and all(len(o.token_ids) == new_tokens for o in done)
    prompt_lens = [len(llm.process(p).token_ids) for p in batch]
    best = min(runs, key=lambda r: r["seconds"])
    ordered = sorted(done, key=lambda o: int(o.request_id))
    return {**best, "tokens_per_s": len(batch) * new_tokens / best["seconds"], "config": repr(engine.config),
            "prompt_lens": prompt_lens, "token_ids": [list(o.token_ids) for o in ordered]}


def _hf_processor(path: str):
    from transformers import AutoImageProcessor, AutoTokenizer, LlavaProcessor

    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = "left"
    return tokenizer, LlavaProcessor(image_processor=AutoImageProcessor.from_pretrained(path, backend="pil"),
                                     tokenizer=tokenizer, patch_size=VISION["patch"],
                                     vision_feature_select_strategy="default", image_token="<image>",
                                     num_additional_image_tokens=1)


def run_transformers(path: str, size: int, new_tokens: int, repeats: int) -> dict:
    """transformers' ``generate`` on the batch mmjax's last timed run saw (it caches nothing
    across calls, so the same batch again costs the same)."""
    import torch
    from transformers import LlavaForConditionalGeneration

    tokenizer, processor = _hf_processor(path)
    model = LlavaForConditionalGeneration.from_pretrained(path, dtype=torch.float32).eval()
    batch = prompts(size, repeats)
    inputs = processor(text=[p["prompt"] for p in batch], images=[p["multi_modal_data"]["image"] for p in batch],
                       return_tensors="pt", padding=True)
    kwargs = dict(do_sample=False, pad_token_id=tokenizer.pad_token_id)
    with torch.no_grad():
        model.generate(**inputs, max_new_tokens=2, **kwargs)  # warm-up
        start = time.perf_counter()
        model.generate(**inputs, max_new_tokens=1, **kwargs)
        prefill_s = time.perf_counter() - start  # the prompt pass and the first token: time to first token
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            out = model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, **kwargs)
            times.append(time.perf_counter() - start)
    seconds = min(times)
    return {"seconds": seconds, "ttft_s": prefill_s, "prefill_s": prefill_s,
            "decode_ms_per_step": 1e3 * (seconds - prefill_s) / (new_tokens - 1),
            "tokens_per_s": len(batch) * new_tokens / seconds, "torch_threads": torch.get_num_threads(),
            "token_ids": out[:, inputs["input_ids"].shape[1]:].tolist()}


def add_rates(side: dict, work: dict[str, float], step_bytes: float, limits: dict[str, float]) -> None:
    """One side's prefill GFLOP/s (and vision GFLOP/s where it has ``vision_s``), decode GB/s, and their
    fractions of the machine's limits (``machine_limits``)."""
    side["prefill_gflops"] = work["total"] / side["prefill_s"] / 1e9
    side["prefill_fraction_of_matmul_rate"] = side["prefill_gflops"] / limits["matmul_gflops_xla"]
    if "vision_s" in side:
        side["vision_gflops"] = work["vision"] / side["vision_s"] / 1e9
    side["decode_gb_per_s"] = step_bytes / (side["decode_ms_per_step"] / 1e3) / 1e9
    side["decode_fraction_of_bandwidth"] = side["decode_gb_per_s"] / limits["read_gb_per_s"]
    side["decode_step_over_limit"] = side["decode_ms_per_step"] / 1e3 / (step_bytes / 1e9 / limits["read_gb_per_s"])
    # Against what this host's skinny matmuls stream (the fastest of XLA's, PyTorch's and mmjax's
    # kernel): a decode step cannot read its bytes faster than its products do.
    skinny = max(limits["decode_matmul_gb_per_s_xla"], limits["decode_matmul_gb_per_s_torch"],
                 limits["decode_matmul_gb_per_s_mmjax_kernel"])
    side["decode_step_over_skinny_matmul_limit"] = side["decode_ms_per_step"] / 1e3 / (step_bytes / 1e9 / skinny)


def rounded(d: dict) -> dict:
    """``d`` with its floats rounded to 3 places."""
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in d.items()}


def summary(ours: dict, theirs: dict, first: dict, identical: str, **extra) -> str:
    """The one-line JSON a run ends with."""
    return json.dumps({"mmjax_tokens_per_s": round(ours["tokens_per_s"], 2),
                       "transformers_tokens_per_s": round(theirs["tokens_per_s"], 2),
                       "ratio": round(ours["tokens_per_s"] / theirs["tokens_per_s"], 3),
                       "second_process_first_call_ratio":
                           round(first["mmjax_warm_cache"] / first["mmjax_empty_cache"], 3),
                       **extra, "identical_greedy_outputs": identical})


def first_call(side: str, path: str, batch_size: int, new_tokens: int) -> float:
    """Load + the first generate, in this (fresh) process."""
    start = time.perf_counter()
    batch = prompts(batch_size)
    if side == "mmjax":
        import mmjax

        llm = mmjax.load(path)
        mmjax.generate(llm, batch, mmjax.SamplingParams(temperature=0.0, max_tokens=new_tokens, ignore_eos=True),
                       use_tqdm=False)
    else:
        import torch
        from transformers import LlavaForConditionalGeneration

        tokenizer, processor = _hf_processor(path)
        model = LlavaForConditionalGeneration.from_pretrained(path, dtype=torch.float32).eval()
        inputs = processor(text=[p["prompt"] for p in batch], images=[p["multi_modal_data"]["image"] for p in batch],
                           return_tensors="pt", padding=True)
        with torch.no_grad():
            model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                           pad_token_id=tokenizer.pad_token_id)
    return time.perf_counter() - start


def first_call_in_fresh_process(side: str, path: str, args, env: dict[str, str], script: str = __file__) -> float:
    """``first_call`` in a new process running ``script`` (this benchmark, or another with the same flags)."""
    command = [sys.executable, script, "--first-call", side, "--checkpoint", path, "--batch", str(args.batch),
               "--new-tokens", str(args.new_tokens)]
    out = subprocess.run(command, env={**os.environ, **env}, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])["first_call_s"]


def first_calls(path: str, args, script: str = __file__) -> dict[str, float]:
    """A new user's first process (it builds the CPU kernel and compiles every program), then a second one
    with the compilation cache the first wrote, then transformers' first process: ``script``'s ``first_call``."""
    cache = {"MMJAX_COMPILATION_CACHE": tempfile.mkdtemp(prefix="mmjax-bench-xla-cache-"),
             "MMJAX_KERNEL_CACHE": tempfile.mkdtemp(prefix="mmjax-bench-kernels-")}
    return {"mmjax_empty_cache": first_call_in_fresh_process("mmjax", path, args, cache, script),
            "mmjax_warm_cache": first_call_in_fresh_process("mmjax", path, args, cache, script),
            "transformers": first_call_in_fresh_process("transformers", path, args, {}, script)}


def parse_args(doc: str, first_call, extra=None):
    """The benchmark's flags (``extra(parser)`` adds its own). In a ``--first-call`` process: runs
    ``first_call(side, checkpoint, batch, new_tokens)``, prints its seconds as JSON and returns None."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--first-call", choices=["mmjax", "transformers"], help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", help="reuse a checkpoint built by an earlier run")
    if extra is not None:
        extra(parser)
    args = parser.parse_args()
    if not args.first_call:
        return args
    print(json.dumps({"first_call_s": first_call(args.first_call, args.checkpoint, args.batch, args.new_tokens)}))
    return None


def main() -> None:
    args = parse_args(__doc__, first_call)
    if args is None:
        return
    path = args.checkpoint or make_checkpoint(tempfile.mkdtemp(prefix="mmjax-bench-"))
    first = first_calls(path, args)
    limits = machine_limits(args.batch)
    ours = run_mmjax(path, args.batch, args.new_tokens, args.repeats)
    theirs = run_transformers(path, args.batch, args.new_tokens, args.repeats)
    same = sum(a == b for a, b in zip(ours.pop("token_ids"), theirs.pop("token_ids")))

    work = prefill_flop(ours["prompt_lens"])
    step_contexts = [n + args.new_tokens // 2 for n in ours["prompt_lens"]]  # the mean decode step's contexts
    step_bytes = decode_bytes_per_step(step_contexts)
    for side in (ours, theirs):
        add_rates(side, work, step_bytes, limits)
    report = {
        "config": {"batch": args.batch, "new_tokens": args.new_tokens, "dtype": "float32", "greedy": True,
                   "text": TEXT, "vision": VISION, "cpu_count": os.cpu_count(), "mmjax_engine": "defaults"},
        "machine": rounded(limits),
        "work": {"prefill_gflop": rounded({k: v / 1e9 for k, v in work.items()}),
                 "decode_mb_per_step": round(step_bytes / 1e6, 1)},
        "first_call_s": rounded(first),
        "mmjax": rounded(ours), "transformers": rounded(theirs), "identical_greedy_outputs": f"{same}/{args.batch}",
    }
    print(json.dumps(report, indent=1))
    print(summary(ours, theirs, first, f"{same}/{args.batch}"))


if __name__ == "__main__":
    main()
