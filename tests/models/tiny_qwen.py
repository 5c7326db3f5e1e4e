"""Shared fixtures of the Qwen-VL tests: tiny checkpoints written by transformers, the reference model, images.

Checkpoints are made once per process (``checkpoint``), in the Hub layout unless
asked otherwise; the pixel budget is raised to ``200 * factor**2`` (the smallest
budget under which ``largest_image_size`` bounds every image's tokens).
"""

from __future__ import annotations

import functools
import os
import tempfile

import numpy as np
from PIL import Image

import mmjax
from mmjax.testing.qwen_checkpoints import make_tiny_qwen2_5_vl_checkpoint, make_tiny_qwen3_vl_checkpoint

#: Qwen2.5-VL's resize factor (14-px patches, 2x2 merge); Qwen3-VL's is 32 (16-px patches).
FACTOR = 28
MAX_PIXELS = 200 * FACTOR * FACTOR
FAMILIES = ("qwen2_5_vl", "qwen3_vl")
_MAKERS = {"qwen2_5_vl": (make_tiny_qwen2_5_vl_checkpoint, 28), "qwen3_vl": (make_tiny_qwen3_vl_checkpoint, 32)}
_ROOT = tempfile.mkdtemp(prefix="mmjax-qwen-")
IMAGE = "<|vision_start|><|image_pad|><|vision_end|>"


@functools.lru_cache(maxsize=None)
def checkpoint(name: str = "hub", family: str = "qwen2_5_vl") -> str:
    """A tiny checkpoint of ``family``: ``"hub"``, ``"save_pretrained"`` (the layout), ``"tied"``."""
    make, factor = _MAKERS[family]
    layout = "save_pretrained" if name == "save_pretrained" else "hub"
    extra = {"tie_word_embeddings": True} if name == "tied" else {}
    return make(os.path.join(_ROOT, f"{family}-{name}"), layout=layout, max_pixels=200 * factor * factor, **extra)


@functools.lru_cache(maxsize=None)
def loaded(name: str = "hub", images: int = 3, family: str = "qwen2_5_vl") -> mmjax.LLM:
    # a context of 1024 bounds how large a video may be (and so the largest video bucket warm-up compiles)
    return mmjax.load(checkpoint(name, family), limit_mm_per_prompt={"image": images}, max_model_len=1024)


@functools.lru_cache(maxsize=None)
def reference(name: str = "hub", family: str = "qwen2_5_vl"):
    """transformers' model and image processor for the checkpoint (the numerical reference)."""
    import torch
    from transformers import AutoImageProcessor, Qwen2_5_VLForConditionalGeneration, Qwen3VLForConditionalGeneration

    model_class = Qwen3VLForConditionalGeneration if family == "qwen3_vl" else Qwen2_5_VLForConditionalGeneration
    model = model_class.from_pretrained(checkpoint(name, family), dtype=torch.float32).eval()
    return model, AutoImageProcessor.from_pretrained(checkpoint(name, family))


def picture(height: int, width: int, seed: int = 0) -> Image.Image:
    """A random RGB image of ``height x width``."""
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def chat(text: str, images: int = 0) -> str:
    """A Qwen chat-format user turn with ``images`` image slots before ``text``, and the assistant's start."""
    return f"<|im_start|>user\n{IMAGE * images}{text}<|im_end|>\n<|im_start|>assistant\n"


def reference_inputs(llm: mmjax.LLM, prompt, name: str = "hub", family: str = "qwen2_5_vl") -> dict:
    """transformers' forward inputs for ``prompt``: mmjax's token ids, the reference image processor's pixels."""
    import torch

    model, processor = reference(name, family)
    ids = torch.tensor(np.asarray(llm.process(prompt).token_ids))[None].long()
    inputs = {"input_ids": ids, "mm_token_type_ids": (ids == model.config.image_token_id).int()}
    images = prompt.get("multi_modal_data", {}).get("image") if isinstance(prompt, dict) else None
    if images is not None:
        pixels = processor(images=images if isinstance(images, list) else [images], return_tensors="pt")
        inputs.update(pixel_values=pixels["pixel_values"], image_grid_thw=pixels["image_grid_thw"])
    return inputs


def relative_error(ours: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(ours - ref).max() / np.abs(ref).max())
