"""Qwen3-VL's registry hooks: the image mapper, max tokens, dummy data, the input processor, M-RoPE positions.

An image's placeholder count follows its own size: ``smart_resize`` fits it to a
multiple of 32 px within the pixel budget (``image_budget``), and every 2x2 block
of 16-px patches is one token (``mmjax.processing.qwen_vl_geometry.image_grid``,
the one place the grid is computed; the mapper, the input processor, the positions
and the max-token count all call it).

A video (``video_hooks``, ``video_budget``) becomes one timestamped run per video:
``<t seconds><|vision_start|>frame<|vision_end|>`` per temporal patch, its placeholder
range from the first frame's vision start to the last one's end. Positions follow
transformers' ``Qwen3VLModel.get_rope_index``: an image as in Qwen2.5-VL (``common.mrope``),
a video one vision span of grid ``(1, h, w)`` per frame, its timestamps text between them.

A prompt's items are recorded images first, then videos: the order the model returns
their rows in (``Qwen3VLForConditionalGeneration.multimodal_embeddings``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np
from PIL import Image

from mmjax.models.common.mrope import VisionSpan, mrope_positions
from mmjax.models.common.placeholders import dummy_runs, replace_each_modality
from mmjax.models.common.vision_packing import Grid, bucket_rows, pad_rows, patch_buckets
from mmjax.models.qwen3_vl.config import Qwen3VLConfig
from mmjax.models.qwen3_vl.embedding_rows import FRAME_ROW
from mmjax.models.qwen3_vl.image_budget import image_config, image_grids, largest_image, model_image_config
from mmjax.processing.image_items import images_of
from mmjax.models.qwen3_vl.video_budget import video_config, video_grid_of
from mmjax.models.qwen3_vl.video_hooks import (
    dummy_video, max_frame_tokens, max_video_tokens, text_capacity, text_row_ids, timestamp_join, video_runs,
    video_spans,
)  # fmt: skip
from mmjax.models.qwen3_vl.vision_layout import vision_layout
from mmjax.processing.qwen_vl_image import process_image
from mmjax.processing.qwen_vl_video import process_video
from mmjax.registry import DecoderOnlyInputs, DummyData, InputContext, MultiModalInputs
from mmjax.registry.processor_kwargs import merge_kwargs
from mmjax.registry.video_items import video_items

#: The smallest patch bucket of the tower (a 512 x 512 image; smaller ones pad up to it).
SMALLEST_BUCKET = 256


def qwen_config(ctx: InputContext) -> Qwen3VLConfig:
    return Qwen3VLConfig.from_hf(ctx.get_hf_config())


def item_limit(ctx: InputContext, modality: str = "image") -> int:
    return int(ctx.model_config.limit_mm_per_prompt.get(modality, 1))


def vision_buckets(ctx: InputContext, modality: str = "image", num_items: int = 1) -> tuple[int, ...]:
    """The patch-row buckets of ``num_items`` images (or videos) packed together: up to that many of the
    largest item. The engine encodes each item alone (``num_items`` 1); the dense forward packs a prompt's."""
    unit = qwen_config(ctx).merge_size**2
    if modality == "image":
        t, h, w = largest_image(model_image_config(ctx))[1]
        limit = max(1, num_items) * t * h * w
    else:
        limit = max(1, num_items) * max_frame_tokens(ctx) * unit
    smallest = min(SMALLEST_BUCKET, -(-limit // unit) * unit)
    return patch_buckets(limit, smallest=smallest, merge=qwen_config(ctx).merge_size)


#: The mapped input keys of each modality: the packed patches and the prefix of the tower's layout fields.
#: A prompt's videos also carry ``video_text_ids`` (``video_hooks.text_row_ids``).
INPUT_KEYS = {"image": ("pixel_values", ""), "video": ("pixel_values_videos", "video_")}


def pack_items(ctx: InputContext, pixel_values: Sequence[np.ndarray], grids: Sequence[Grid],
               modality: str = "image") -> MultiModalInputs:
    """The items' patches in one bucket of rows, with the tower's layout for them (keys by ``INPUT_KEYS``)."""
    cfg = qwen_config(ctx).vision
    patches = np.concatenate(pixel_values).astype(np.float32)
    rows = bucket_rows(patches.shape[0], vision_buckets(ctx, modality, len(grids)))
    layout = vision_layout(grids, rows, merge=cfg.spatial_merge_size, side=cfg.position_side)
    pixels_key, prefix = INPUT_KEYS[modality]
    fields = {prefix + name: value for name, value in dataclasses.asdict(layout).items()}
    return MultiModalInputs({pixels_key: pad_rows(patches, rows), **fields})


def video_rows(ctx: InputContext, patch_rows: int, num_videos: int = 1) -> int:
    """Rows of a video bucket's ``video_text_ids``: its merged frame rows and room for their text tokens."""
    return patch_rows // qwen_config(ctx).merge_size**2 + text_capacity(ctx, patch_rows, num_videos)


def map_images(ctx: InputContext, data: object, *, min_pixels: int | None = None,
               max_pixels: int | None = None) -> MultiModalInputs:
    """The image mapper: resize within the budget, normalise, cut into patches, pack into a bucket."""
    config = image_config(ctx, min_pixels, max_pixels)
    mapped = [process_image(image, config) for image in images_of(data, "Qwen3-VL")]
    return pack_items(ctx, [m.pixel_values for m in mapped], [tuple(m.grid_thw) for m in mapped])


def map_videos(ctx: InputContext, data: object, *, video_min_pixels: int | None = None,
               video_max_pixels: int | None = None) -> MultiModalInputs:
    """The video mapper: sample and resize frames, cut into temporal patches, pack into a video bucket; and
    ``video_text_ids``, each row of the videos' placeholder runs (a text token's id, or ``FRAME_ROW``)."""
    config = video_config(ctx, video_min_pixels, video_max_pixels)
    mapped = [process_video(item.frames, config, item.fps) for item in video_items(data)]
    packed = pack_items(ctx, [m.pixel_values for m in mapped], [tuple(m.grid_thw) for m in mapped], "video")
    rows = video_rows(ctx, packed["pixel_values_videos"].shape[0], len(mapped))
    text_ids = text_row_ids(video_runs(ctx, data, config), qwen_config(ctx).video_token_id, rows)
    return MultiModalInputs({**packed, "video_text_ids": text_ids})


def max_image_tokens(ctx: InputContext) -> int:
    """Placeholder tokens of the largest image under the model-wide budget."""
    config = model_image_config(ctx)
    t, h, w = largest_image(config)[1]
    return t * h * w // config.merge_size**2


def input_processor(ctx: InputContext, inputs: DecoderOnlyInputs, *, min_pixels: int | None = None,
                    max_pixels: int | None = None, video_min_pixels: int | None = None,
                    video_max_pixels: int | None = None) -> DecoderOnlyInputs:
    """Expand each ``<|image_pad|>`` into its image's placeholders and each video's block into its timestamped
    run (``video_hooks``: the first timestamp before the range, joined with the text before it as transformers
    tokenizes it), and record where: images first, then videos.

    Raises:
      ValueError: markers and items disagree, or a budget the request may not ask for.
    """
    cfg, data, runs = qwen_config(ctx), inputs.multi_modal_data, {}
    if data.get("image") is not None:
        config = image_config(ctx, min_pixels, max_pixels)
        grids = image_grids(images_of(data["image"], "Qwen3-VL"), config)
        counts = [t * h * w // config.merge_size**2 for t, h, w in grids]
        runs["image"] = (cfg.image_token_id, [((), [cfg.image_token_id] * count) for count in counts])
    if data.get("video") is not None:
        runs["video"] = (cfg.video_token_id, video_runs(ctx, data["video"], video_config(ctx, video_min_pixels,
                                                                                         video_max_pixels)))
    if not runs:
        return inputs
    wrappers = {"video": (cfg.vision_start_token_id, cfg.vision_end_token_id)}
    joins = {"video": timestamp_join(ctx.get_tokenizer())} if "video" in runs else {}
    token_ids, placeholders = replace_each_modality(inputs.prompt_token_ids, runs, wrappers, joins)
    return dataclasses.replace(inputs, prompt_token_ids=token_ids, multi_modal_placeholders=placeholders)


def mrope_input_positions(ctx: InputContext, inputs: DecoderOnlyInputs) -> tuple[np.ndarray, int]:
    """``(positions int32[3, L], delta)``: each image's and each video frame's tokens at (its start,
    start + row, start + column); the timestamps and every other token at consecutive text positions."""
    spans, data = [], inputs.multi_modal_data
    kwargs = merge_kwargs(ctx.model_config.mm_processor_kwargs, inputs.mm_processor_kwargs)
    if data.get("image") is not None:
        config = image_config(ctx, kwargs.get("min_pixels"), kwargs.get("max_pixels"))
        merge = config.merge_size
        grids = image_grids(images_of(data["image"], "Qwen3-VL"), config)
        for placeholder, (t, h, w) in zip(inputs.multi_modal_placeholders["image"], grids):
            spans.append(VisionSpan(placeholder.offset, (t, h // merge, w // merge)))
    if data.get("video") is not None:
        config = video_config(ctx, kwargs.get("video_min_pixels"), kwargs.get("video_max_pixels"))
        grids = [video_grid_of(item, config, i)[0] for i, item in enumerate(video_items(data["video"]))]
        spans += video_spans(inputs.prompt_token_ids, inputs.multi_modal_placeholders["video"], grids,
                             qwen_config(ctx).video_token_id, config.merge_size)
    return mrope_positions(len(inputs.prompt_token_ids), spans)


def dummy_data(ctx: InputContext, seq_len: int, mm_counts: Mapping[str, int]) -> DummyData:
    """``mm_counts["image"]`` images of the size with the most tokens and ``mm_counts["video"]`` videos of
    about the most tokens one video may have, each with a placeholder range of its modality's max tokens."""
    cfg, runs = qwen_config(ctx), []
    if mm_counts.get("image", 0):
        (height, width), _ = largest_image(model_image_config(ctx))
        runs.append(("image", cfg.image_token_id, Image.new("RGB", (width, height)), max_image_tokens(ctx),
                     mm_counts["image"]))
    if mm_counts.get("video", 0):
        per_video = max_video_tokens(ctx)
        runs.append(("video", cfg.video_token_id, dummy_video(ctx, per_video)[0], per_video, mm_counts["video"]))
    return dummy_runs(seq_len, runs)


def encoder_input_variants(ctx: InputContext) -> list[MultiModalInputs]:
    """One (zero) input per patch bucket of one item of each modality: every shape the mappers return for
    the engine, which encodes each item alone (for warm-up)."""
    cfg = qwen_config(ctx).vision
    merge = cfg.spatial_merge_size

    def zeros(rows: int, modality: str) -> MultiModalInputs:
        packed = pack_items(ctx, [np.zeros((rows, cfg.patch_dim), np.float32)], [(1, merge, rows // merge)], modality)
        if modality == "image":
            return packed
        return MultiModalInputs({**packed, "video_text_ids": np.full(video_rows(ctx, rows), FRAME_ROW, np.int32)})

    modalities = [m for m in ("image", "video") if item_limit(ctx, m) > 0]
    return [zeros(rows, m) for m in modalities for rows in vision_buckets(ctx, m)]
