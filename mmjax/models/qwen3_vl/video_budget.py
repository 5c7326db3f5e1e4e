"""Qwen3-VL's video settings for a model and a request, each video's patch grid and times, and the most
vision tokens a video can have.

Settings are the checkpoint's video-processor config (``video_preprocessor_config.json``, else
``processor_config.json``'s ``video_processor``), read as transformers' ``Qwen3VLVideoProcessor``:
frames sampled at ``fps`` (2) per second of the source, at least ``min_frames`` (4); the pixel budget
``size`` (``shortest_edge`` / ``longest_edge``) counts the pixels of *all* sampled frames, not one frame's
(``smart_resize_frames``). A request's ``mm_processor_kwargs`` ``video_min_pixels`` / ``video_max_pixels``
set that budget for its videos, ``video_max_pixels`` only ever lower.

The budget does not bound a video's tokens by itself: every frame keeps at least one ``factor x factor``
block and a frame of extreme aspect ratio keeps its short side at ``factor``, so many frames can take more
tokens than ``longest_edge / (2 * factor**2)``. ``max_vision_tokens`` bounds them from the frame count alone.
"""

from __future__ import annotations

import math

from mmjax.models.common.vision_packing import Grid
from mmjax.processing.qwen_vl_config import QwenVideoConfig, lower_pixel_budget
from mmjax.processing.qwen_vl_frames import frame_timestamps, metadata_fps, sample_frame_indices
from mmjax.processing.qwen_vl_geometry import MAX_ASPECT_RATIO
from mmjax.processing.qwen_vl_video import frame_size
from mmjax.registry import InputContext
from mmjax.registry.video_items import VideoItem

#: The ``mm_processor_kwargs`` a request may give its videos (each only lowering the model's).
VIDEO_KWARGS = ("video_min_pixels", "video_max_pixels")


def video_config(ctx: InputContext, video_min_pixels: int | None = None,
                 video_max_pixels: int | None = None) -> QwenVideoConfig:
    """The settings a request maps its videos with: the checkpoint's, the budget (over all frames) only lowered.

    Raises:
      ValueError: ``video_max_pixels`` above the model's, ``video_min_pixels`` above the budget, or values
        that are not positive ints.
    """
    config = QwenVideoConfig.from_hf_dict(ctx.get_hf_video_processor_config(), family="qwen3_vl")
    return lower_pixel_budget(config, video_min_pixels, video_max_pixels, prefix="video_", budget="video budget",
                              hint=" (the budget counts the pixels of all sampled frames)")


def video_grid_of(item: VideoItem, config: QwenVideoConfig, index: int = 0) -> tuple[Grid, list[float]]:
    """A video's patch grid ``(t, h, w)`` and the seconds of each temporal patch, from its shape and fps alone.

    Raises:
      ValueError: naming video ``index``: too few frames after sampling, an aspect ratio over 200.
    """
    total, height, width = item.frames.shape[:3]
    try:
        indices = sample_frame_indices(total, item.fps, config)
        size = frame_size(len(indices), height, width, config)
    except ValueError as err:
        raise ValueError(f"video {index}: {err}") from err
    p, tps = config.patch_size, config.temporal_patch_size
    grid = (-(-len(indices) // tps), size[0] // p, size[1] // p)
    return grid, frame_timestamps(indices, metadata_fps(item.fps, config), tps)


def max_sampled_frames(config: QwenVideoConfig, max_video_frames: int) -> int:
    """The most frames the processor keeps of a video of at most ``max_video_frames`` frames (a fixed
    ``num_frames`` is kept whatever the length, repeating frames; a short video is repeated up to ``min_frames``)."""
    if not config.do_sample_frames:
        return max_video_frames
    if config.num_frames is not None:
        return config.num_frames
    return min(config.max_frames, max(max_video_frames, config.min_frames))


def _budget(config: QwenVideoConfig, frames: int) -> int:
    """The pixel budget ``frame_size`` resizes ``frames`` frames within (``cap_pixels_per_frame`` lowers it)."""
    if not config.cap_pixels_per_frame:
        return config.max_pixels
    per_frame = max(min(config.max_video_tokens * config.factor**2, config.max_pixels // frames),
                    int(config.min_pixels * 1.05))
    return per_frame * frames


def max_units_per_frame(config: QwenVideoConfig, frames: int) -> int:
    """An upper bound on the ``factor x factor`` blocks (tokens) of each of ``frames`` resized frames.

    ``smart_resize_frames`` keeps a rounded size whose ``t_bar`` frames fit the budget (at most
    ``budget / t_bar``), scales a larger one to ``budget / frames`` per frame unless a side floors at
    ``factor`` (the other then at most ``sqrt(200 * budget / frames)``), or scales a smaller one up to
    ``min_pixels / frames`` plus at most one block per side.
    """
    f, tps = config.factor, config.temporal_patch_size
    budget = _budget(config, frames)
    t_bar = max(1, round(frames / tps)) * tps
    kept = budget // t_bar
    long_side = math.floor(math.sqrt(MAX_ASPECT_RATIO * budget / frames) / f) * f
    scaled = max(budget // frames, f * long_side, f * f)
    small = config.min_pixels / frames
    sides = math.sqrt(small) * (math.sqrt(MAX_ASPECT_RATIO) + 1 / math.sqrt(MAX_ASPECT_RATIO))
    upscaled = math.ceil(small + f * sides + f * f)
    return max(kept, scaled, upscaled) // (f * f)


def max_vision_tokens(config: QwenVideoConfig, max_video_frames: int, per_patch_extra: int = 0) -> int:
    """An upper bound on ``t * tokens_per_frame + t * per_patch_extra`` over every video of at most
    ``max_video_frames`` frames (``per_patch_extra``: tokens each temporal patch brings besides its frame's)."""
    tps = config.temporal_patch_size
    most = 0
    for frames in range(tps, max_sampled_frames(config, max_video_frames) + 1):
        t = -(-frames // tps)
        most = max(most, t * (max_units_per_frame(config, frames) + per_patch_extra))
    return most
