"""The README's main job: a real photo through the multimodal input pipeline, end to end.

Runs with no download: a tiny checkpoint directory (llava-hf layout: config,
tokenizer, image processor) is written to a temporary directory, and the photo
ships with mmjax.
"""

from __future__ import annotations

import tempfile
from importlib import resources

import numpy as np
from PIL import Image

from mmjax.registry import INPUT_REGISTRY, MULTIMODAL_REGISTRY, ModelConfig, process_prompt


def demo_photo() -> Image.Image:
    """The photo that ships with mmjax (NASA, public domain), 384x384 RGB."""
    with resources.files("mmjax.assets").joinpath("astronaut.jpg").open("rb") as f:
        image = Image.open(f)
        image.load()
    return image


def run_registry_demo() -> dict:
    """Register, process and print: what the registry does for one prompt with one photo."""
    from mmjax.testing.toy_vlm import ToyVLM, make_toy_checkpoint

    checkpoint = make_toy_checkpoint(tempfile.mkdtemp(prefix="mmjax-demo-"))
    config = ModelConfig.from_pretrained(checkpoint, model_cls=ToyVLM, limit_mm_per_prompt={"image": 2})
    photo = demo_photo()
    prompt = {"prompt": "USER: <image>\nWhat is shown in this image? ASSISTANT:", "multi_modal_data": {"image": photo}}
    processed = process_prompt(config, prompt)
    dummy = INPUT_REGISTRY.dummy_data_for_profiling(config, seq_len=96)
    pixels = processed.mm_kwargs["pixel_values"]
    summary = {
        "model": config.name,
        "photo": f"{photo.width}x{photo.height} {photo.mode}",
        "limits_per_prompt": dict(MULTIMODAL_REGISTRY.get_mm_limits_per_prompt(config)),
        "max_multimodal_tokens": MULTIMODAL_REGISTRY.get_max_multimodal_tokens(config),
        "prompt_tokens": len(processed.token_ids),
        "placeholders": {k: [tuple(r) for r in v] for k, v in processed.placeholders.items()},
        "pixel_values": f"{pixels.dtype}{list(pixels.shape)} mean={float(np.mean(pixels)):.4f}",
        "dummy_tokens": len(dummy.prompt_token_ids),
    }
    print("mmjax registry demo (a toy model: the LLaVA models are not in mmjax yet)")
    for key, value in summary.items():
        print(f"  {key:>22}: {value}")
    return summary
