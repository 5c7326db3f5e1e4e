"""Throughput of mmjax.generate vs transformers' PyTorch generate, same checkpoint, same run.

The issue's configuration: a random LLaVA-1.5 with text hidden 512, 8 layers,
8 heads, MLP 1376, vocab 32064; CLIP hidden 256, 4 layers, 336/14 images (576
image tokens); batch 8; prompts of ~20 text tokens plus one image; 64 new
tokens; float32; greedy. Both sides are warmed up first (mmjax compiles its
step shapes, PyTorch runs once), then timed. Prints JSON; the last line has
``mmjax_tokens_per_s``, ``transformers_tokens_per_s`` and ``ratio``.

    python benchmarks/generate_vs_transformers.py [--batch 8] [--new-tokens 64] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
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


def make_checkpoint(path: str) -> str:
    from mmjax.testing.random_llava import make_random_llava_checkpoint

    return make_random_llava_checkpoint(
        path, image_size=336, patch_size=14, vision_hidden=256, text_hidden=512, num_layers=8,
        vocab_size=32064, seed=0,
        text_config={"num_attention_heads": 8, "num_key_value_heads": 8, "intermediate_size": 1376},
        vision_config={"num_hidden_layers": 4, "num_attention_heads": 8, "intermediate_size": 1024},
    )


def prompts(batch: int):
    from skimage import data
    from PIL import Image

    photos = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket()]
    return [{"prompt": f"USER: <image>\n{QUESTIONS[i % len(QUESTIONS)]} ASSISTANT:",
             "multi_modal_data": {"image": Image.fromarray(photos[i % len(photos)])}} for i in range(batch)]


def run_mmjax(path: str, batch: list[dict], new_tokens: int, repeats: int) -> dict:
    import mmjax

    llm = mmjax.load(path)
    config = mmjax.EngineConfig(max_num_seqs=len(batch), max_num_batched_tokens=2048, max_model_len=1024)
    engine = llm.engine(config)
    start = time.perf_counter()
    compiled = engine.warmup(prompt_logprobs=False)
    warmup_s = time.perf_counter() - start
    params = mmjax.SamplingParams(temperature=0.0, max_tokens=new_tokens, ignore_eos=True)
    times = []
    for _ in range(repeats):
        engine.stats.update(prefill_step_s=0.0, decode_step_s=0.0)
        start = time.perf_counter()
        outputs = mmjax.generate(llm, batch, params, use_tqdm=False)
        times.append(time.perf_counter() - start)
    phases = {k: round(engine.stats[k], 3) for k in ("prefill_step_s", "decode_step_s")}
    assert all(len(o.token_ids) == new_tokens for o in outputs)
    best = min(times)
    return {"seconds": best, "tokens_per_s": len(batch) * new_tokens / best, "last_run_phases": phases,
            "warmup_s": warmup_s,
            "programs_compiled": compiled, "kv_cache": engine.memory.describe(),
            "token_ids": [list(o.token_ids) for o in outputs]}


def run_transformers(path: str, batch: list[dict], new_tokens: int, repeats: int) -> dict:
    import torch
    from transformers import AutoImageProcessor, AutoTokenizer, LlavaForConditionalGeneration, LlavaProcessor

    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = "left"
    processor = LlavaProcessor(image_processor=AutoImageProcessor.from_pretrained(path, backend="pil"),
                               tokenizer=tokenizer, patch_size=14, vision_feature_select_strategy="default",
                               image_token="<image>", num_additional_image_tokens=1)
    model = LlavaForConditionalGeneration.from_pretrained(path, dtype=torch.float32).eval()
    inputs = processor(text=[p["prompt"] for p in batch], images=[p["multi_modal_data"]["image"] for p in batch],
                       return_tensors="pt", padding=True)
    kwargs = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                  pad_token_id=tokenizer.pad_token_id)
    with torch.no_grad():
        model.generate(**inputs, max_new_tokens=2, do_sample=False, pad_token_id=tokenizer.pad_token_id)  # warm-up
        start = time.perf_counter()
        model.generate(**inputs, max_new_tokens=1, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        prefill_s = time.perf_counter() - start  # the prompt pass and one token
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            out = model.generate(**inputs, **kwargs)
            times.append(time.perf_counter() - start)
    best = min(times)
    generated = out[:, inputs["input_ids"].shape[1]:].tolist()
    return {"seconds": best, "tokens_per_s": len(batch) * new_tokens / best, "prefill_s": prefill_s,
            "torch_threads": torch.get_num_threads(),
            "token_ids": generated}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    path = make_checkpoint(tempfile.mkdtemp(prefix="mmjax-bench-"))
    batch = prompts(args.batch)
    ours = run_mmjax(path, batch, args.new_tokens, args.repeats)
    theirs = run_transformers(path, batch, args.new_tokens, args.repeats)
    same = sum(a == b for a, b in zip(ours.pop("token_ids"), theirs.pop("token_ids")))
    report = {
        "config": {"batch": args.batch, "new_tokens": args.new_tokens, "dtype": "float32", "greedy": True,
                   "text": "hidden 512, 8 layers, 8 heads, MLP 1376, vocab 32064",
                   "vision": "CLIP hidden 256, 4 layers, 336/14 (576 image tokens)", "cpu_count": os.cpu_count()},
        "mmjax": ours, "transformers": theirs, "identical_greedy_outputs": f"{same}/{args.batch}",
    }
    print(json.dumps(report, indent=1))
    print(json.dumps({"mmjax_tokens_per_s": round(ours["tokens_per_s"], 2),
                      "transformers_tokens_per_s": round(theirs["tokens_per_s"], 2),
                      "ratio": round(ours["tokens_per_s"] / theirs["tokens_per_s"], 3)}))


if __name__ == "__main__":
    main()
