"""Qwen2.5-VL's videos: frame sampling, the pixel budget, patches, placeholder counts and time positions.

A video's frames are sampled and resized as transformers' Qwen2-VL video processor
does (``mmjax.processing.qwen_vl_video``); every 2 frames make one temporal patch,
every 2x2 block of patches one token. Its M-RoPE temporal positions step by
``tokens_per_second * second_per_grid_t`` per temporal patch. Settings are the
checkpoint's video-processor config (Hub Qwen2.5-VL checkpoints have none: the image
processor's, as transformers reads them).

How large a video may be is bounded by the operator's ceilings (``max_video_frames``,
``max_video_pixels``: frames x height x width of the source) and by the context:
a video's tokens must fit ``max_model_len``. The tower's largest video bucket follows
from that bound.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mmjax.models.common.mrope import VisionSpan
from mmjax.models.common.vision_packing import Grid
from mmjax.processing.qwen_vl_config import QwenVideoConfig, lower_pixel_budget
from mmjax.processing.qwen_vl_frames import metadata_fps, sample_frame_indices, second_per_grid_ts
from mmjax.processing.qwen_vl_video import QwenVideoInputs, frame_size, process_video
from mmjax.registry import InputContext, PlaceholderRange
from mmjax.registry.video_items import VideoItem, video_items
from mmjax.registry.video_limits import video_ceilings

#: The ``mm_processor_kwargs`` a request may give its videos (each only lowering the model's).
VIDEO_KWARGS = ("video_min_pixels", "video_max_pixels")


def video_config(ctx: InputContext, video_min_pixels: int | None = None,
                 video_max_pixels: int | None = None) -> QwenVideoConfig:
    """The settings a request maps its videos with: the checkpoint's, a per-frame budget only ever lowered.

    Raises:
      ValueError: ``video_max_pixels`` above the model's, or a budget that is not positive ints.
    """
    config = QwenVideoConfig.from_hf_dict(ctx.get_hf_video_processor_config(), family="qwen2_vl")
    return lower_pixel_budget(config, video_min_pixels, video_max_pixels, prefix="video_", budget="per-frame budget")


def video_grid_of(item: VideoItem, config: QwenVideoConfig) -> tuple[Grid, float]:
    """A video's patch grid ``(t, h, w)`` and its seconds per temporal patch, from its size alone."""
    total, height, width = item.frames.shape[:3]
    indices = sample_frame_indices(total, item.fps, config)
    size = frame_size(len(indices), height, width, config)
    p, tps = config.patch_size, config.temporal_patch_size
    grid = (-(-len(indices) // tps), size[0] // p, size[1] // p)
    seconds = second_per_grid_ts(indices, total, metadata_fps(item.fps, config), tps)
    return grid, seconds


def video_token_counts(data: object, config: QwenVideoConfig) -> list[int]:
    unit = config.merge_size**2
    return [int(np.prod(video_grid_of(item, config)[0])) // unit for item in video_items(data)]


def map_video_items(data: object, config: QwenVideoConfig) -> list[QwenVideoInputs]:
    return [process_video(item.frames, config, item.fps) for item in video_items(data)]


def video_spans(data: object, ranges: Sequence[PlaceholderRange], config: QwenVideoConfig,
                tokens_per_second: float) -> list[VisionSpan]:
    """Each video's M-RoPE span: its merged grid, its temporal positions ``tokens_per_second`` apart per second."""
    merge, spans = config.merge_size, []
    for placeholder, item in zip(ranges, video_items(data)):
        (t, h, w), seconds = video_grid_of(item, config)
        spans.append(VisionSpan(placeholder.offset, (t, h // merge, w // merge), tokens_per_second * seconds))
    return spans


def max_video_tokens(ctx: InputContext) -> int:
    """The most tokens one video may have: those of the dummy video built up to ``video_token_bound`` (so the
    profiling data holds exactly the maximum); a video with more is refused by name before any work."""
    return dummy_video(ctx, video_token_bound(ctx))[1]


def video_token_bound(ctx: InputContext) -> int:
    """The ceilings' largest video (all its frames kept, each at the per-frame budget), at most the context."""
    config = video_config(ctx)
    per_frame = config.max_pixels // (config.patch_size**2 * config.merge_size**2)
    frames = video_ceilings(ctx.model_config.mm_processor_kwargs, None).max_video_frames
    if config.do_sample_frames:
        frames = min(frames, config.max_frames)
    tokens = -(-frames // config.temporal_patch_size) * per_frame
    context = ctx.model_config.context_length
    return max(1, tokens if context is None else min(context, tokens))


def dummy_video(ctx: InputContext, num_tokens: int) -> tuple[np.ndarray, int]:
    """Frames (zeros) of a video with close to ``num_tokens`` tokens and at most that many, and its count."""
    config = video_config(ctx)
    side = config.factor * 8  # 8x8 merged units a frame: 64 tokens per temporal patch
    while side > config.factor and (side * side > config.max_pixels or (side // config.factor) ** 2 > num_tokens):
        side -= config.factor
    per_patch = (side // config.factor) ** 2
    frames = max(1, num_tokens // per_patch) * config.temporal_patch_size
    video = np.zeros((frames, side, side, 3), np.uint8)
    return video, video_token_counts(VideoItem(video, {"fps": 24.0}), config)[0]
