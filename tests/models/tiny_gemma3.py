"""Shared fixtures of the Gemma 3 tests: tiny checkpoints written by transformers, its processor, images.

Checkpoints are made once per process (``checkpoint``) in a temporary directory, in the Hub layout;
``reference`` gives transformers' own processor and model for one (the numerical reference).
"""

from __future__ import annotations

import functools
import os
import tempfile
from typing import Any

import numpy as np
from PIL import Image

from mmjax.testing.gemma3_checkpoints import make_tiny_gemma3_checkpoint, make_tiny_gemma3_text_checkpoint

_ROOT = tempfile.mkdtemp(prefix="mmjax-gemma3-")
#: Named checkpoints: ``"hub"`` (the defaults), ``"pan_and_scan"`` (pan and scan on, 16-px crops at least),
#: ``"untied"`` (a separate LM head), ``"text"`` (``Gemma3ForCausalLM``).
_VARIANTS: dict[str, dict[str, Any]] = {
    "hub": {},
    "pan_and_scan": {"processor": {"do_pan_and_scan": True, "pan_and_scan_min_crop_size": 16,
                                   "pan_and_scan_max_num_crops": 3, "pan_and_scan_min_ratio_to_activate": 1.2}},
    "untied": {"tie_word_embeddings": False},
}


@functools.lru_cache(maxsize=None)
def checkpoint(name: str = "hub") -> str:
    """The directory of the tiny checkpoint ``name`` (written on first use)."""
    path = os.path.join(_ROOT, name)
    if name == "text":
        return make_tiny_gemma3_text_checkpoint(path)
    return make_tiny_gemma3_checkpoint(path, **_VARIANTS[name])


@functools.lru_cache(maxsize=None)
def hf_processor(name: str = "hub"):
    """transformers' ``AutoProcessor`` for the checkpoint (``Gemma3Processor``, PIL image backend)."""
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(checkpoint(name))


@functools.lru_cache(maxsize=None)
def reference(name: str = "hub"):
    """transformers' model for the checkpoint, float32, in eval mode."""
    import torch
    from transformers import Gemma3ForCausalLM, Gemma3ForConditionalGeneration

    model_class = Gemma3ForCausalLM if name == "text" else Gemma3ForConditionalGeneration
    return model_class.from_pretrained(checkpoint(name), dtype=torch.float32).eval()


def picture(height: int, width: int, seed: int = 0) -> Image.Image:
    """A random RGB image of ``height x width``."""
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def chat(text: str, images: int = 0) -> str:
    """A Gemma chat-format user turn with ``images`` image markers before ``text``, and the model's start."""
    return f"<bos><start_of_turn>user\n{'<start_of_image>' * images}{text}<end_of_turn>\n<start_of_turn>model\n"
