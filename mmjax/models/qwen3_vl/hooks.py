"""Qwen3-VL's registry hooks: the image mapper, max tokens, dummy data, the input processor, M-RoPE positions.

An image's placeholder count follows its own size: ``smart_resize`` fits it to a
multiple of 32 px within the pixel budget (``image_budget``), and every 2x2 block
of 16-px patches is one token (``mmjax.processing.qwen_vl_geometry.image_grid``,
the one place the grid is computed; the mapper, the input processor, the positions
and the max-token count all call it).

Positions follow transformers' ``Qwen3VLModel.get_rope_index``: an image as in
Qwen2.5-VL (``common.mrope``). A video (to come) is one vision span per frame, its
timestamps text between them (``<t seconds><|vision_start|>frame<|vision_end|>...``),
so ``mrope_input_positions`` will add one ``VisionSpan`` of grid ``(1, h, w)`` per frame.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np
from PIL import Image

from mmjax.models.common.mrope import VisionSpan, mrope_positions
from mmjax.models.common.placeholders import expand_placeholders
from mmjax.models.common.vision_packing import Grid, bucket_rows, pad_rows, patch_buckets
from mmjax.models.qwen3_vl.config import Qwen3VLConfig
from mmjax.models.qwen3_vl.image_budget import image_config, image_grids, images_of, largest_image, model_image_config
from mmjax.models.qwen3_vl.vision_layout import vision_layout
from mmjax.processing.qwen_vl_image import process_image
from mmjax.registry import DecoderOnlyInputs, DummyData, InputContext, MultiModalInputs, PlaceholderRange
from mmjax.registry.processor_kwargs import merge_kwargs

#: The smallest patch bucket of the tower (a 512 x 512 image; smaller ones pad up to it).
SMALLEST_BUCKET = 256


def qwen_config(ctx: InputContext) -> Qwen3VLConfig:
    return Qwen3VLConfig.from_hf(ctx.get_hf_config())


def image_limit(ctx: InputContext) -> int:
    return int(ctx.model_config.limit_mm_per_prompt.get("image", 1))


def vision_buckets(ctx: InputContext) -> tuple[int, ...]:
    """The patch-row buckets of a prompt's images: up to the limit of the largest image."""
    config = model_image_config(ctx)
    t, h, w = largest_image(config)[1]
    limit = max(1, image_limit(ctx)) * t * h * w
    unit = config.merge_size**2
    return patch_buckets(limit, smallest=min(SMALLEST_BUCKET, -(-limit // unit) * unit), merge=config.merge_size)


def pack_items(ctx: InputContext, pixel_values: Sequence[np.ndarray], grids: Sequence[Grid]) -> MultiModalInputs:
    """The items' patches in one bucket of rows, with the tower's layout for them."""
    cfg = qwen_config(ctx).vision
    patches = np.concatenate(pixel_values).astype(np.float32)
    rows = bucket_rows(patches.shape[0], vision_buckets(ctx))
    layout = vision_layout(grids, rows, merge=cfg.spatial_merge_size, side=cfg.position_side)
    return MultiModalInputs({"pixel_values": pad_rows(patches, rows), **dataclasses.asdict(layout)})


def map_images(ctx: InputContext, data: object, *, min_pixels: int | None = None,
               max_pixels: int | None = None) -> MultiModalInputs:
    """The image mapper: resize within the budget, normalise, cut into patches, pack into a bucket."""
    config = image_config(ctx, min_pixels, max_pixels)
    mapped = [process_image(image, config) for image in images_of(data)]
    return pack_items(ctx, [m.pixel_values for m in mapped], [tuple(m.grid_thw) for m in mapped])


def max_image_tokens(ctx: InputContext) -> int:
    """Placeholder tokens of the largest image under the model-wide budget."""
    config = model_image_config(ctx)
    t, h, w = largest_image(config)[1]
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
    counts = [t * h * w // unit for t, h, w in image_grids(images_of(images), config)]
    token_ids, ranges = expand_placeholders(inputs.prompt_token_ids, qwen_config(ctx).image_token_id, counts)
    return dataclasses.replace(inputs, prompt_token_ids=token_ids, multi_modal_placeholders={"image": ranges})


def mrope_input_positions(ctx: InputContext, inputs: DecoderOnlyInputs) -> tuple[np.ndarray, int]:
    """``(positions int32[3, L], delta)``: each image's tokens at (its start, start + row, start + column)."""
    spans = []
    images = inputs.multi_modal_data.get("image")
    if images is not None:
        kwargs = merge_kwargs(ctx.model_config.mm_processor_kwargs, inputs.mm_processor_kwargs)
        config = image_config(ctx, kwargs.get("min_pixels"), kwargs.get("max_pixels"))
        merge = config.merge_size
        grids = image_grids(images_of(images), config)
        for placeholder, (t, h, w) in zip(inputs.multi_modal_placeholders["image"], grids):
            spans.append(VisionSpan(placeholder.offset, (t, h // merge, w // merge)))
    return mrope_positions(len(inputs.prompt_token_ids), spans)


def dummy_data(ctx: InputContext, seq_len: int, mm_counts: Mapping[str, int]) -> DummyData:
    """``mm_counts["image"]`` images of the size with the most tokens, each with its full placeholder run."""
    (height, width), _ = largest_image(model_image_config(ctx))
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
