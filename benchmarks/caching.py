"""The caches on vs off, in the same run: a VQA loop and requests sharing a long instruction.

The model is ``generate_vs_transformers.py``'s random LLaVA-1.5 (text 512 wide, 8 layers;
CLIP 256 wide, 4 layers; 336 px images: 576 image tokens), float32, greedy, 8 new tokens.
"On" is what a user gets with no configuration (``mmjax.load`` and ``EngineConfig()``:
prefix caching, the encoder cache and the processor cache); "off" is the same with every
cache disabled (``mm_processor_cache_gb=0``, ``enable_prefix_caching=False``,
``encoder_cache_tokens=0``). Both engines are warmed up (``engine.warmup()``) first, so
compilation is not timed.

(a) VQA: call 1 asks a question about each of 8 images; calls 2-4 ask one more question
each about the same 8 images; then the same three calls, each on 8 images never seen (the
"new images" reference the targets are stated against).
(b) 32 requests: one ~500-token instruction, then each its own image and question. The
image tokens (576 each) differ from request to request, so at best the instruction is
computed once: the floor of "on" over "off" is (image + question) / (instruction + image +
question), about 0.54; ``instruction_prefill_on_vs_off`` is the share of the instruction's
tokens computed (prefill tokens "on" less those of the images and questions, which "off"
counts as its total less 32 instructions).

Printed (JSON) per call: seconds, encoder calls, requests encoded, prefill tokens computed;
the ratios; and whether the outputs of "on" and "off" are identical, token for token.

    python benchmarks/caching.py [--max-tokens 8]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from generate_vs_transformers import make_checkpoint  # noqa: E402

QUESTIONS = ["What is shown in this image?", "What colors do you see?", "Is there a person in it?",
             "Where could this photo have been taken?"]
SENTENCE = ("You are a careful visual assistant. Look at the whole picture, name each object you see, "
            "say its color, its size and where it is, and answer in one short sentence. ")


def photos(count: int, offset: int = 0) -> list:
    """``count`` distinct photos: crops of scikit-image's sample photos at different offsets."""
    from PIL import Image
    from skimage import data

    sources = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket()]
    images = []
    for i in range(offset, offset + count):
        pixels = sources[i % len(sources)]
        shift = 8 * (i // len(sources))
        images.append(Image.fromarray(pixels[shift:shift + 300, shift:shift + 380]))
    return images


def instruction(tokenizer, tokens: int = 500) -> str:
    words = (SENTENCE * 40).split()
    lo, hi = 1, len(words)
    while lo < hi:  # the most words whose text stays within ``tokens`` tokens
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if len(tokenizer(" ".join(words[:mid])).input_ids) <= tokens else (lo, mid - 1)
    return " ".join(words[:lo])


def vqa_prompt(image, question: str, prefix: str = "") -> dict:
    return {"prompt": f"USER: {prefix}<image>\n{question} ASSISTANT:", "multi_modal_data": {"image": image}}


def timed_call(llm, prompts: list[dict], params) -> tuple[dict, list]:
    import mmjax

    engine = llm.engine()
    before = {k: engine.stats[k] for k in ("encoder_calls", "encoded_items", "prefill_tokens")}
    start = time.perf_counter()
    outputs = mmjax.generate(llm, prompts, params, use_tqdm=False)
    seconds = time.perf_counter() - start
    figures = {"seconds": round(seconds, 3), **{k: engine.stats[k] - v for k, v in before.items()}}
    return figures, [list(o.token_ids) for o in outputs]


def run_side(path: str, caches: bool, params) -> dict:
    import mmjax

    llm = mmjax.load(path) if caches else mmjax.load(path, mm_processor_cache_gb=0)
    config = mmjax.EngineConfig() if caches else mmjax.EngineConfig(enable_prefix_caching=False,
                                                                   encoder_cache_tokens=0)
    llm.engine(config).warmup(prompt_logprobs=False)
    seen = photos(8)
    side, tokens = {"vqa_same_images": [], "vqa_new_images": []}, []
    for question in QUESTIONS:
        figures, out = timed_call(llm, [vqa_prompt(image, question) for image in seen], params)
        side["vqa_same_images"].append(figures)
        tokens.append(out)
    for i, question in enumerate(QUESTIONS[1:]):
        new = photos(8, offset=8 + 8 * i)
        figures, out = timed_call(llm, [vqa_prompt(image, question) for image in new], params)
        side["vqa_new_images"].append(figures)
        tokens.append(out)
    shared = instruction(llm.tokenizer)
    side["instruction_tokens"] = len(llm.tokenizer(shared).input_ids)
    figures, out = timed_call(llm, [vqa_prompt(image, QUESTIONS[0], shared + "\n")
                                    for image in photos(32, offset=32)], params)
    side["shared_instruction"] = figures
    tokens.append(out)
    side["caches"] = llm.engine().cache_stats()
    return side, tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-tokens", type=int, default=8)
    args = parser.parse_args()
    import mmjax

    params = mmjax.SamplingParams(max_tokens=args.max_tokens, temperature=0.0, ignore_eos=True)
    with tempfile.TemporaryDirectory() as tmp:
        path = make_checkpoint(os.path.join(tmp, "llava"))
        on, on_tokens = run_side(path, True, params)
        off, off_tokens = run_side(path, False, params)
    later_on = sum(c["seconds"] for c in on["vqa_same_images"][1:])
    new_on = sum(c["seconds"] for c in on["vqa_new_images"])
    later_off = sum(c["seconds"] for c in off["vqa_same_images"][1:])
    report = {
        "on": on, "off": off,
        "identical_outputs": on_tokens == off_tokens,
        "vqa": {
            "later_calls_s_on": round(later_on, 3), "same_calls_new_images_s_on": round(new_on, 3),
            "later_calls_s_off": round(later_off, 3),
            "later_vs_new_images": round(later_on / new_on, 3),  # target <= 0.5
            "later_on_vs_off": round(later_on / later_off, 3),
            "encoded_items_on": sum(c["encoded_items"] for c in on["vqa_same_images"]),  # target: 8
        },
        "shared_instruction": {
            "prefill_tokens_on_vs_off": round(on["shared_instruction"]["prefill_tokens"]
                                              / off["shared_instruction"]["prefill_tokens"], 3),
            "instruction_prefill_on_vs_off": round(
                (on["shared_instruction"]["prefill_tokens"] - off["shared_instruction"]["prefill_tokens"]
                 + 32 * off["instruction_tokens"]) / (32 * off["instruction_tokens"]), 3),
            "seconds_on_vs_off": round(on["shared_instruction"]["seconds"] / off["shared_instruction"]["seconds"], 3),
        },
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
