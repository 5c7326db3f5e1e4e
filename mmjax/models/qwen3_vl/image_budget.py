"""Qwen3-VL's image settings for a model and a request: the pixel budget, each image's patch grid.

The budget is the checkpoint's (``preprocessor_config.json``'s ``size``:
``shortest_edge`` = min pixels, ``longest_edge`` = max pixels), overridden
model-wide by ``mmjax.load(..., mm_processor_kwargs={"min_pixels": ..., "max_pixels": ...})``.
A request's ``mm_processor_kwargs`` may lower ``max_pixels`` (or change ``min_pixels``
within it), never raise it: the tower's largest bucket, the KV budget and warm-up
were sized for the model-wide budget. (The same rules as Qwen2.5-VL's hooks.)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence


from mmjax.models.common.vision_packing import Grid
from mmjax.processing.qwen_vl_config import QwenImageConfig, lower_pixel_budget
from mmjax.processing.image_items import ImageItem, image_size
from mmjax.processing.qwen_vl_geometry import image_grid, largest_image_size
from mmjax.registry import InputContext



def model_image_config(ctx: InputContext) -> QwenImageConfig:
    """The checkpoint's image settings with the model-wide ``mm_processor_kwargs`` budget applied."""
    config = QwenImageConfig.from_hf_dict(ctx.get_hf_image_processor_config())
    model_kwargs = ctx.model_config.mm_processor_kwargs
    budget = {k: int(model_kwargs[k]) for k in ("min_pixels", "max_pixels") if model_kwargs.get(k) is not None}
    return dataclasses.replace(config, **budget) if budget else config


def image_config(ctx: InputContext, min_pixels: int | None = None, max_pixels: int | None = None) -> QwenImageConfig:
    """The settings one request maps its images with (its budget may only be lower than the model's).

    Raises:
      ValueError: ``max_pixels`` above the model-wide budget, ``min_pixels`` above ``max_pixels``, or a
        budget that is not positive ints.
    """
    hint = " (raise it model-wide with mmjax.load(..., mm_processor_kwargs={'max_pixels': ...}))"
    return lower_pixel_budget(model_image_config(ctx), min_pixels, max_pixels, hint=hint)






def grid_of(height: int, width: int, config: QwenImageConfig) -> Grid:
    """The ``(1, h, w)`` patch grid of a ``height x width`` image under ``config``'s budget."""
    return tuple(image_grid(height, width, patch_size=config.patch_size, merge_size=config.merge_size,
                            min_pixels=config.min_pixels, max_pixels=config.max_pixels))


def image_grids(images: Sequence[ImageItem], config: QwenImageConfig) -> list[Grid]:
    """Each image's ``(1, h, w)`` patch grid under ``config``'s budget."""
    return [grid_of(*image_size(image), config) for image in images]


def largest_image(config: QwenImageConfig) -> tuple[tuple[int, int], Grid]:
    """``((height, width), grid)`` of the image with the most patches under ``config``'s budget."""
    size = largest_image_size(patch_size=config.patch_size, merge_size=config.merge_size,
                              min_pixels=config.min_pixels, max_pixels=config.max_pixels)
    return size, grid_of(*size, config)
