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
from mmjax.models.common.placeholders import dummy_runs, expand_each_modality
from mmjax.models.common.vision_packing import Grid, bucket_rows, pad_rows, patch_buckets
from mmjax.models.qwen2_5_vl.config import Qwen2_5_VLConfig
from mmjax.models.qwen2_5_vl.video_hooks import (
    dummy_video, map_video_items, max_video_tokens, video_config, video_spans, video_token_bound, video_token_counts,
)  # fmt: skip
from mmjax.models.qwen2_5_vl.vision_layout import windowed_vision_layout
from mmjax.processing.qwen_vl_config import QwenImageConfig, lower_pixel_budget
from mmjax.processing.image_items import image_size, images_of
from mmjax.processing.qwen_vl_geometry import image_grid, largest_image_size
from mmjax.processing.qwen_vl_image import process_image
from mmjax.registry import DecoderOnlyInputs, DummyData, InputContext, MultiModalInputs
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
    hint = " (raise it model-wide with mmjax.load(..., mm_processor_kwargs={'max_pixels': ...}))"
    return lower_pixel_budget(model_image_config(ctx), min_pixels, max_pixels, hint=hint)






def image_grids(images: Sequence[Image.Image | np.ndarray], config: QwenImageConfig) -> list[Grid]:
    """Each image's ``(1, h, w)`` patch grid under ``config``'s budget."""
    return [image_grid(*image_size(image), patch_size=config.patch_size, merge_size=config.merge_size,
                       min_pixels=config.min_pixels, max_pixels=config.max_pixels) for image in images]


def vision_buckets(ctx: InputContext, modality: str = "image", num_items: int = 1) -> tuple[int, ...]:
    """The patch-row buckets of ``num_items`` images (or videos) packed together: up to that many of the
    largest item. The engine encodes each item alone (``num_items`` 1); the dense forward packs a prompt's."""
    unit = qwen_config(ctx).merge_size**2
    most_tokens = max_image_tokens(ctx) if modality == "image" else max_video_tokens(ctx)
    limit = max(1, num_items) * most_tokens * unit
    return patch_buckets(limit, smallest=min(SMALLEST_BUCKET, limit), merge=qwen_config(ctx).merge_size)


def item_limit(ctx: InputContext, modality: str) -> int:
    return int(ctx.model_config.limit_mm_per_prompt.get(modality, 1))


#: The mapped input keys of each modality: the packed patches and the tower's layout fields.
INPUT_KEYS = {"image": ("pixel_values", ""), "video": ("pixel_values_videos", "video_")}


def pack_items(ctx: InputContext, pixel_values: Sequence[np.ndarray], grids: Sequence[Grid],
               modality: str = "image") -> MultiModalInputs:
    """The items' patches in one bucket of rows, with the tower's layout for them (keys by ``INPUT_KEYS``)."""
    cfg = qwen_config(ctx).vision
    patches = np.concatenate(pixel_values).astype(np.float32)
    rows = bucket_rows(patches.shape[0], vision_buckets(ctx, modality, len(grids)))
    layout = windowed_vision_layout(grids, rows, merge=cfg.spatial_merge_size, window_size=cfg.window_size,
                                    patch_size=cfg.patch_size)
    pixels_key, prefix = INPUT_KEYS[modality]
    fields = {prefix + name: value for name, value in dataclasses.asdict(layout).items()}
    return MultiModalInputs({pixels_key: pad_rows(patches, rows), **fields})


def map_images(ctx: InputContext, data: object, *, min_pixels: int | None = None,
               max_pixels: int | None = None) -> MultiModalInputs:
    """The image mapper: resize within the budget, normalise, cut into patches, pack into a bucket."""
    config = image_config(ctx, min_pixels, max_pixels)
    mapped = [process_image(image, config) for image in images_of(data, "Qwen2.5-VL")]
    return pack_items(ctx, [m.pixel_values for m in mapped], [tuple(m.grid_thw) for m in mapped])


def max_image_tokens(ctx: InputContext) -> int:
    """Placeholder tokens of the largest image under the model-wide budget."""
    config = model_image_config(ctx)
    height, width = largest_image_size(patch_size=config.patch_size, merge_size=config.merge_size,
                                       min_pixels=config.min_pixels, max_pixels=config.max_pixels)
    t, h, w = image_grids([np.zeros((height, width, 3), np.uint8)], config)[0]
    return t * h * w // config.merge_size**2


def map_videos(ctx: InputContext, data: object, *, video_min_pixels: int | None = None,
               video_max_pixels: int | None = None) -> MultiModalInputs:
    """The video mapper: sample and resize frames, cut into temporal patches, pack into a video bucket."""
    mapped = map_video_items(data, video_config(ctx, video_min_pixels, video_max_pixels))
    return pack_items(ctx, [m.pixel_values for m in mapped], [tuple(m.grid_thw) for m in mapped], "video")


def input_processor(ctx: InputContext, inputs: DecoderOnlyInputs, *, min_pixels: int | None = None,
                    max_pixels: int | None = None, video_min_pixels: int | None = None,
                    video_max_pixels: int | None = None) -> DecoderOnlyInputs:
    """Expand each ``<|image_pad|>`` and ``<|video_pad|>`` into its item's placeholder count and record where.

    Placeholders are recorded images first, then videos: the order ``multimodal_embeddings`` returns rows in.

    Raises:
      ValueError: markers and items disagree, or a budget the request may not ask for.
    """
    cfg, data, markers = qwen_config(ctx), inputs.multi_modal_data, {}
    if data.get("image") is not None:
        config = image_config(ctx, min_pixels, max_pixels)
        grids = image_grids(images_of(data["image"], "Qwen2.5-VL"), config)
        counts = [t * h * w // config.merge_size**2 for t, h, w in grids]
        markers["image"] = (cfg.image_token_id, counts)
    if data.get("video") is not None:
        counts = video_token_counts(data["video"], video_config(ctx, video_min_pixels, video_max_pixels))
        markers["video"] = (cfg.video_token_id, counts)
    if not markers:
        return inputs
    token_ids, placeholders = expand_each_modality(inputs.prompt_token_ids, markers)
    return dataclasses.replace(inputs, prompt_token_ids=token_ids, multi_modal_placeholders=placeholders)


def mrope_input_positions(ctx: InputContext, inputs: DecoderOnlyInputs) -> tuple[np.ndarray, int]:
    """``(positions int32[3, L], delta)``: each item's tokens at (its start + time, row, column)."""
    spans, data = [], inputs.multi_modal_data
    kwargs = merge_kwargs(ctx.model_config.mm_processor_kwargs, inputs.mm_processor_kwargs)
    if data.get("image") is not None:
        config = image_config(ctx, kwargs.get("min_pixels"), kwargs.get("max_pixels"))
        merge = config.merge_size
        grids = image_grids(images_of(data["image"], "Qwen2.5-VL"), config)
        for placeholder, (t, h, w) in zip(inputs.multi_modal_placeholders["image"], grids):
            spans.append(VisionSpan(placeholder.offset, (t, h // merge, w // merge)))
    if data.get("video") is not None:
        config = video_config(ctx, kwargs.get("video_min_pixels"), kwargs.get("video_max_pixels"))
        spans += video_spans(data["video"], inputs.multi_modal_placeholders["video"], config,
                             qwen_config(ctx).tokens_per_second)
    return mrope_positions(len(inputs.prompt_token_ids), spans)


def dummy_data(ctx: InputContext, seq_len: int, mm_counts: Mapping[str, int]) -> DummyData:
    """``mm_counts["image"]`` images of the size with the most tokens and ``mm_counts["video"]`` videos of
    about the most tokens one video may have, each with its full placeholder run (images first)."""
    cfg, runs = qwen_config(ctx), []
    if mm_counts.get("image", 0):
        config = model_image_config(ctx)
        height, width = largest_image_size(patch_size=config.patch_size, merge_size=config.merge_size,
                                           min_pixels=config.min_pixels, max_pixels=config.max_pixels)
        runs.append(("image", cfg.image_token_id, Image.new("RGB", (width, height)), max_image_tokens(ctx),
                     mm_counts["image"]))
    if mm_counts.get("video", 0):
        video, per_video = dummy_video(ctx, video_token_bound(ctx))
        runs.append(("video", cfg.video_token_id, (video, {"fps": 24.0}), per_video, mm_counts["video"]))
    return dummy_runs(seq_len, runs)


def encoder_input_variants(ctx: InputContext) -> list[MultiModalInputs]:
    """One (zero) input per patch bucket of one item of each modality: every shape the mappers return for
    the engine, which encodes each item alone (for warm-up)."""
    cfg = qwen_config(ctx).vision
    merge = cfg.spatial_merge_size

    def zeros(rows: int, modality: str) -> MultiModalInputs:
        return pack_items(ctx, [np.zeros((rows, cfg.patch_dim), np.float32)], [(1, merge, rows // merge)], modality)

    modalities = [m for m in ("image", "video") if item_limit(ctx, m) > 0]
    return [zeros(rows, m) for m in modalities for rows in vision_buckets(ctx, m)]
