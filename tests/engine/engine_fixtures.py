"""Shared pieces of the engine tests: tiny checkpoints, images, transformers' greedy reference."""

from __future__ import annotations

import functools

import numpy as np
from PIL import Image

import mmjax

_LLAVA = "tiny llava-1.5"
_NEXT = "tiny llava-next"
_TIED = "tiny llava-1.5, tied embeddings"


@functools.cache
def checkpoint(kind: str) -> str:
    import tempfile

    root = tempfile.mkdtemp(prefix="mmjax-engine-")
    if kind in (_LLAVA, _TIED):
        from mmjax.testing.checkpoints import make_tiny_llava_checkpoint

        tied = kind == _TIED
        return make_tiny_llava_checkpoint(f"{root}/llava", seed=11 + 2 * tied, tie_word_embeddings=tied)
    from mmjax.testing.next_checkpoints import make_tiny_llava_next_checkpoint

    return make_tiny_llava_next_checkpoint(f"{root}/next", seed=12)


@functools.cache
def torch_model(kind: str):
    from transformers import AutoModelForImageTextToText

    return AutoModelForImageTextToText.from_pretrained(checkpoint(kind)).eval()


def load(kind: str, **kwargs) -> "mmjax.LLM":
    kwargs.setdefault("limit_mm_per_prompt", {"image": 2})
    return mmjax.load(checkpoint(kind), **kwargs)


def picture(height: int, width: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def hf_inputs(kind: str, llm, prompt: dict) -> dict:
    """transformers' own processing of ``prompt`` (its processor expands the images)."""
    from transformers import AutoProcessor

    images = prompt.get("multi_modal_data", {}).get("image")
    images = None if images is None else (images if isinstance(images, list) else [images])
    if kind in (_LLAVA, _TIED):
        from transformers import AutoImageProcessor, LlavaProcessor

        processor = LlavaProcessor(
            image_processor=AutoImageProcessor.from_pretrained(checkpoint(kind), backend="pil"),
            tokenizer=llm.tokenizer, patch_size=6, vision_feature_select_strategy="default",
            image_token="<image>", num_additional_image_tokens=1)
    else:
        processor = AutoProcessor.from_pretrained(checkpoint(kind))
    return dict(processor(text=prompt["prompt"], images=images, return_tensors="pt"))


def hf_greedy(kind: str, llm, prompt: dict, max_new_tokens: int) -> list[int]:
    """Greedy decoding with transformers' model, recomputing the whole sequence each step."""
    import torch

    inputs = hf_inputs(kind, llm, prompt)
    ids = inputs.pop("input_ids")
    inputs.pop("attention_mask", None)
    out = []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            logits = torch_model(kind)(input_ids=ids, **inputs).logits[0, -1]
            token = int(torch.argmax(logits))
            out.append(token)
            ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
    return out


LLAVA, NEXT, TIED = _LLAVA, _NEXT, _TIED
