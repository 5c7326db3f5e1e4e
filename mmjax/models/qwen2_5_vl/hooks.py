"""Qwen2.5-VL's registry hooks: the image mapper, max tokens, dummy data, the input processor, M-RoPE positions.

An image's placeholder count follows its own size: ``smart_resize`` fits it to a
multiple of 28 px within the pixel budget, and every 2x2 block of 14-px patches
is one token (``mmjax.processing.qwen_vl_geometry.image_grid``, the one place
the grid is computed; the mapper, the input processor, the positions and the
max-token count all call it).

The pixel budget is the checkpoint's (``preprocessor_config.json``), overridden
model-wide by ``mmjax.load(..., mm_processor_kwargs={"min_pixels": ..., "max_pixels": ...})``.
A request's ``mm_processor_kwargs`` may lower ``max_pixels`` (or change ``min_pixels``
within it), never raise it: the tower's largest bucket, the KV budget and warm-up
were sized for the model-wide budget.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np
from PIL import Image

from mmjax.models.common.mrope import VisionSpan, mrope_positions
from mmjax.models.common.placeholders import expand_placeholders
from mmjax.models.common.vision_packing import Grid, bucket_rows, pad_rows, patch_buckets
from mmjax.models.qwen2_5_vl.config import Qwen2_5_VLConfig
from mmjax.models.qwen2_5_vl.vision_layout import windowed_vision_layout
from mmjax.processing.qwen_vl_config import QwenImageConfig
from mmjax.processing.qwen_vl_geometry import image_grid, largest_image_size
from mmjax.processing.qwen_vl_image import process_image
from mmjax.registry import DecoderOnlyInputs, DummyData, InputContext, MultiModalInputs, PlaceholderRange
from mmjax.registry.processor_kwargs import merge_kwargs

#: The smallest patch bucket of the tower (a 448 x 448 image; smaller ones pad up to it).
SMALLEST_BUCKET = 256


def qwen_config(ctx: InputContext) -> Qwen2_5_VLConfig:
    return Qwen2_5_VLConfig.from_hf(ctx.get_hf_config())


def model_image_config(ctx: InputContext) -> QwenImageConfig:
    """The checkpoint's image settings with the model-wide ``mm_processor_kwargs`` budget applied."""
    config = QwenImageConfig.from_hf_dict(ctx.get_hf_image_processor_config())
    model_kwargs = ctx.model_config.mm_processor_kwargs
    budget = {k: int(model_kwargs[k]) for k in ("min_pixels", "max_pixels") if model_kwargs.get(k) is not None}
    return dataclasses.replace(config, **budget) if budget else config


def image_config(ctx: InputContext, min_pixels: int | None = None, max_pixels: int | None = None) -> QwenImageConfig:
    """The settings one request maps its images with (its budget may only be lower than the model's).

    Raises:
      ValueError: ``max_pixels`` above the model-wide budget, or a budget that is not positive ints.
    """
    config = model_image_config(ctx)
    for name, value in (("min_pixels", min_pixels), ("max_pixels", max_pixels)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"mm_processor_kwargs {name} must be a positive int, got {value!r}")
    if max_pixels is not None and max_pixels > config.max_pixels:
        raise ValueError(f"mm_processor_kwargs max_pixels={max_pixels} is above the model's pixel budget "
                         f"({config.max_pixels}); a request may only lower it (raise it model-wide with "
                         f"mmjax.load(..., mm_processor_kwargs={{'max_pixels': ...}}))")
    request = {k: v for k, v in (("min_pixels", min_pixels), ("max_pixels", max_pixels)) if v is not None}
    if not request:
        return config
    config = dataclasses.replace(config, **request)
    if config.min_pixels > config.max_pixels:
        raise ValueError(f"mm_processor_kwargs min_pixels={config.min_pixels} is above max_pixels={config.max_pixels}")
    return config


def _images(data: object) -> list[Image.Image | np.ndarray]:
    items = data if isinstance(data, list) else [data]
    for index, item in enumerate(items):
        if not isinstance(item, (Image.Image, np.ndarray)):
            raise TypeError(f"image {index}: Qwen2.5-VL takes PIL images or uint8 [height, width, 3] arrays, "
                            f"got {type(item).__name__}")
    return items


def image_size(image: Image.Image | np.ndarray) -> tuple[int, int]:
    """``(height, width)`` of a PIL image or an ``[height, width, 3]`` array."""
    return (image.height, image.width) if isinstance(image, Image.Image) else tuple(np.shape(image)[:2])


def image_grids(images: Sequence[Image.Image | np.ndarray], config: QwenImageConfig) -> list[Grid]:
    """Each image's ``(1, h, w)`` patch grid under ``config``'s budget."""
    return [image_grid(*image_size(image), patch_size=config.patch_size, merge_size=config.merge_size,
                       min_pixels=config.min_pixels, max_pixels=config.max_pixels) for image in images]


def vision_buckets(ctx: InputContext) -> tuple[int, ...]:
    """The patch-row buckets of a prompt's images: up to the limit of the largest image."""
    config = model_image_config(ctx)
    largest = largest_image_size(patch_size=config.patch_size, merge_size=config.merge_size,
                                 min_pixels=config.min_pixels, max_pixels=config.max_pixels)
    t, h, w = image_grids([np.zeros((*largest, 3), np.uint8)], config)[0]
    limit = max(1, image_limit(ctx)) * t * h * w
    unit = config.merge_size**2
    return patch_buckets(limit, smallest=min(SMALLEST_BUCKET, -(-limit // unit) * unit), merge=config.merge_size)


def image_limit(ctx: InputContext) -> int:
    return int(ctx.model_config.limit_mm_per_prompt.get("image", 1))


def pack_items(ctx: InputContext, pixel_values: Sequence[np.ndarray], grids: Sequence[Grid]) -> MultiModalInputs:
    """The items' patches in one bucket of rows, with the tower's layout for them."""
    cfg = qwen_config(ctx).vision
    patches = np.concatenate(pixel_values).astype(np.float32)
    rows = bucket_rows(patches.shape[0], vision_buckets(ctx))
    layout = windowed_vision_layout(grids, rows, merge=cfg.spatial_merge_size, window_size=cfg.window_size,
                                    patch_size=cfg.patch_size)
    return MultiModalInputs({"pixel_values": pad_rows(patches, rows), **dataclasses.asdict(layout)})


def map_images(ctx: InputContext, data: object, *, min_pixels: int | None = None,
               max_pixels: int | None = None) -> MultiModalInputs:
    """The image mapper: resize within the budget, normalise, cut into patches, pack into a bucket."""
    config = image_config(ctx, min_pixels, max_pixels)
    mapped = [process_image(image, config) for image in _images(data)]
    return pack_items(ctx, [m.pixel_values for m in mapped], [tuple(m.grid_thw) for m in mapped])


def max_image_tokens(ctx: InputContext) -> int:
    """Placeholder tokens of the largest image under the model-wide budget."""
    config = model_image_config(ctx)
    height, width = largest_image_size(patch_size=config.patch_size, merge_size=config.merge_size,
                                       min_pixels=config.min_pixels, max_pixels=config.max_pixels)
    t, h, w = image_grids([np.zeros((height, width, 3), np.uint8)], config)[0]
    return t * h * w // config.merge_size**2


def input_processor(ctx: InputContext, inputs: DecoderOnlyInputs, *, min_pixels: int | None = None,
                    max_pixels: int | None = None) -> DecoderOnlyInputs:
    """Expand each ``<|image_pad|>`` into its image's placeholder count and record where.

    Raises:
      ValueError: markers and images disagree, or a budget the request may not ask for.
    """
    images = inputs.multi_modal_data.get("image")
    if images is None:
        return inputs
    config = image_config(ctx, min_pixels, max_pixels)
    unit = config.merge_size**2
    counts = [t * h * w // unit for t, h, w in image_grids(_images(images), config)]
    token_ids, ranges = expand_placeholders(inputs.prompt_token_ids, qwen_config(ctx).image_token_id, counts)
    return dataclasses.replace(inputs, prompt_token_ids=token_ids, multi_modal_placeholders={"image": ranges})


def mrope_input_positions(ctx: InputContext, inputs: DecoderOnlyInputs) -> tuple[np.ndarray, int]:
    """``(positions int32[3, L], delta)``: each image's tokens at (its start, row, column)."""
    spans = []
    images = inputs.multi_modal_data.get("image")
    if images is not None:
        kwargs = merge_kwargs(ctx.model_config.mm_processor_kwargs, inputs.mm_processor_kwargs)
        config = image_config(ctx, kwargs.get("min_pixels"), kwargs.get("max_pixels"))
        merge = config.merge_size
        grids = image_grids(_images(images), config)
        for placeholder, (t, h, w) in zip(inputs.multi_modal_placeholders["image"], grids):
            spans.append(VisionSpan(placeholder.offset, (t, h // merge, w // merge)))
    return mrope_positions(len(inputs.prompt_token_ids), spans)


def dummy_data(ctx: InputContext, seq_len: int, mm_counts: Mapping[str, int]) -> DummyData:
    """``mm_counts["image"]`` images of the size with the most tokens, each with its full placeholder run."""
    config = model_image_config(ctx)
    height, width = largest_image_size(patch_size=config.patch_size, merge_size=config.merge_size,
                                       min_pixels=config.min_pixels, max_pixels=config.max_pixels)
    per_image, num_images = max_image_tokens(ctx), mm_counts.get("image", 0)
    token_ids = [qwen_config(ctx).image_token_id] * (per_image * num_images)
    token_ids += [0] * max(0, seq_len - len(token_ids))
    return DummyData(
        prompt_token_ids=token_ids,
        multi_modal_data={"image": [Image.new("RGB", (width, height))] * num_images},
        multi_modal_placeholders={"image": [PlaceholderRange(i * per_image, per_image) for i in range(num_images)]},
    )


def encoder_input_variants(ctx: InputContext) -> list[MultiModalInputs]:
    """One (zero) input per patch bucket: every shape ``map_images`` returns (for warm-up)."""
    cfg = qwen_config(ctx).vision
    merge = cfg.spatial_merge_size
    return [pack_items(ctx, [np.zeros((rows, cfg.patch_dim), np.float32)], [(1, merge, rows // merge)])
            for rows in vision_buckets(ctx)]
