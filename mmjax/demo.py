"""The README's main job: a real photo and a prompt through LLaVA, end to end, with no download.

Without ``--model`` it writes a small random LLaVA-1.5 checkpoint (the real
336x336 / 14x14 geometry, tiny widths; random weights, and it says so) and the
photo that ships with mmjax. With ``--model DIR`` it loads a real llava-hf
checkpoint directory the same way.
"""

from __future__ import annotations

import os
import tempfile
import time
from importlib import resources

import numpy as np
from PIL import Image

DEMO_PROMPT = "USER: <image>\nWhat is shown in this image? ASSISTANT:"


def demo_photo() -> Image.Image:
    """The photo that ships with mmjax (NASA, public domain), 384x384 RGB."""
    with resources.files("mmjax.assets").joinpath("astronaut.jpg").open("rb") as f:
        image = Image.open(f)
        image.load()
    return image


def describe_layout(token_ids: np.ndarray, placeholders, tokenizer) -> str:
    """The prompt as text with each image's placeholder run shown as one ``[image i: n tokens]``."""
    parts, start = [], 0
    for i, (offset, length) in enumerate(placeholders.get("image", ())):
        parts.append(tokenizer.decode(token_ids[start:offset]))
        parts.append(f"[image {i}: {length} tokens at {offset}]")
        start = offset + length
    parts.append(tokenizer.decode(token_ids[start:]))
    return "".join(parts)


def run_demo(model: str | None = None, image: str | None = None, prompt: str = DEMO_PROMPT,
             dtype: str = "float32") -> dict:
    """Load, process, run; print what happened and return it as a dict."""
    import mmjax

    if model is None:
        from mmjax.testing.random_llava import make_random_llava_checkpoint

        model = make_random_llava_checkpoint(tempfile.mkdtemp(prefix="mmjax-demo-"))
        print("No --model given: using a small random LLaVA-1.5 checkpoint (random weights, so the\n"
              "next-token guesses below are noise; pass --model DIR for a real llava-hf checkpoint).")
    photo = Image.open(image) if image else demo_photo()
    start = time.perf_counter()
    llm = mmjax.load(model, dtype=dtype)
    loaded = time.perf_counter()
    request = {"prompt": prompt, "multi_modal_data": {"image": photo}}
    processed = llm.process(request)
    token_ids, logits = llm.logits(request)
    done = time.perf_counter()
    probs = np.exp(logits[-1] - logits[-1].max())
    probs /= probs.sum()
    top = np.argsort(-probs)[:5]
    summary = {
        "model": os.fspath(model),
        "image": f"{photo.width}x{photo.height} {photo.mode}",
        "prompt": describe_layout(token_ids, processed.placeholders, llm.tokenizer),
        "pixel_values": "x".join(map(str, processed.mm_kwargs["pixel_values"].shape)),
        "prompt_tokens": int(len(token_ids)),
        "next_token_top5": [(llm.tokenizer.decode([int(t)]), round(float(probs[t]), 4)) for t in top],
        "load_s": round(loaded - start, 2),
        "first_forward_s": round(done - loaded, 2),
    }
    for key, value in summary.items():
        print(f"{key:>16}: {value}")
    return summary
