"""One video to the Qwen vision tower's input: transformers' Qwen2-VL / Qwen3-VL video processors in numpy.

``process_video`` samples the frames (``qwen_vl_frames``), resizes them all to
one size chosen from the video's pixel budget, normalizes them and cuts them
into patches of ``temporal_patch_size`` frames, padding with copies of the last
frame, exactly as transformers 5.25's ``Qwen2VLVideoProcessor`` (Qwen2-VL,
Qwen2.5-VL) or ``Qwen3VLVideoProcessor`` does. Those always resize with
torchvision, i.e. torch's antialiased kernel (``resize_like_torch``), and
normalize the torch way. It also returns the times each model needs:
``second_per_grid_ts`` (Qwen2.5-VL) and per-patch timestamps (Qwen3-VL).

The pixel budget of one frame: Qwen2-VL's ``smart_resize`` with
``[min_pixels, max_pixels]`` per frame; Qwen3-VL's ``smart_resize_frames``
with the budget over all sampled frames. With ``cap_pixels_per_frame`` (off by
default in transformers 5.25) ``max_pixels`` is first lowered to a share of
``max_video_tokens``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import PIL.Image

from mmjax.processing.qwen_vl_config import QwenVideoConfig
from mmjax.processing.qwen_vl_frames import (
    frame_timestamps,
    metadata_fps,
    sample_frame_indices,
    second_per_grid_ts,
)
from mmjax.processing.qwen_vl_geometry import Grid, smart_resize, smart_resize_frames, video_grid
from mmjax.processing.qwen_vl_patches import normalize, patchify
from mmjax.processing.resample import resize_like_torch

VideoInput = np.ndarray | Sequence[PIL.Image.Image]


class QwenVideoInputs(NamedTuple):
    """One video mapped for the vision tower.

    pixel_values: float32 ``[t * h * w, C * temporal_patch_size * patch_size**2]`` (``pixel_values_videos``)
    grid_thw: the patch grid ``(t, h, w)`` (``video_grid_thw`` row), ``t = ceil(F' / temporal_patch_size)``
    num_tokens: placeholder tokens, ``t * h * w // merge_size**2``
    frame_indices: int64 ``[F']``, the source frames kept
    frames: uint8 ``[F', h * patch_size, w * patch_size, 3]``, the kept frames resized
    second_per_grid_ts: seconds per temporal patch (Qwen2.5-VL's M-RoPE)
    timestamps: seconds of each temporal patch, ``t`` values (Qwen3-VL's ``<t seconds>`` text)
    """

    pixel_values: np.ndarray
    grid_thw: Grid
    num_tokens: int
    frame_indices: np.ndarray
    frames: np.ndarray
    second_per_grid_ts: float
    timestamps: list[float]

    @property
    def tokens_per_frame(self) -> int:
        """Tokens of one temporal patch: ``h * w // merge_size**2`` (``num_tokens // t``)."""
        return self.num_tokens // self.grid_thw.t


def to_frames_array(video: VideoInput) -> np.ndarray:
    """uint8 ``[F, Y, X, 3]`` frames, or a list of RGB PIL images of one size -> uint8 ``[F, Y, X, 3]``."""
    if isinstance(video, np.ndarray):
        if video.dtype != np.uint8 or video.ndim != 4 or video.shape[-1] != 3:
            raise ValueError(
                f"expected a video as uint8 frames [num_frames, height, width, 3], got {video.dtype} of shape "
                f"{video.shape}"
            )
        frames = video
    elif isinstance(video, (list, tuple)) and all(isinstance(frame, PIL.Image.Image) for frame in video):
        modes = {frame.mode for frame in video}
        sizes = {frame.size for frame in video}
        if modes - {"RGB"} or len(sizes) > 1:
            raise ValueError(f"expected video frames as RGB PIL images of one size, got modes {modes}, sizes {sizes}")
        frames = np.stack([np.asarray(frame) for frame in video]) if video else np.zeros((0, 1, 1, 3), np.uint8)
    else:
        raise ValueError(
            f"expected a video as a uint8 [num_frames, height, width, 3] array or a list of PIL images, "
            f"got {type(video).__name__}"
        )
    if frames.shape[0] == 0:
        raise ValueError("a video needs at least one frame, got 0")
    if min(frames.shape[1:3]) == 0:
        raise ValueError(f"video frames need at least one pixel per side, got {frames.shape[1]}x{frames.shape[2]}")
    return frames


def frame_size(num_frames: int, height: int, width: int, config: QwenVideoConfig) -> tuple[int, int]:
    """The ``(height, width)`` every one of ``num_frames`` sampled ``height x width`` frames is resized to."""
    factor, tps = config.factor, config.temporal_patch_size
    min_pixels, max_pixels = config.min_pixels, config.max_pixels
    if config.family == "qwen2_vl":
        if config.cap_pixels_per_frame:
            total_pixels = int(config.max_video_tokens * factor * factor * 0.9)
            max_pixels = max(min(max_pixels, total_pixels * tps // num_frames), int(min_pixels * 1.05))
        return smart_resize(height, width, factor, min_pixels, max_pixels)
    if config.cap_pixels_per_frame:
        frame_cap = config.max_video_tokens * factor * factor
        per_frame = max(min(frame_cap, max_pixels // num_frames), int(min_pixels * 1.05))
        max_pixels = per_frame * num_frames
    return smart_resize_frames(num_frames, height, width, tps, factor, min_pixels, max_pixels)


def num_video_tokens(num_frames: int, height: int, width: int, config: QwenVideoConfig) -> int:
    """Placeholder tokens of ``num_frames`` *sampled* ``height x width`` frames (no pixels needed).

    Equal to ``process_video(...).num_tokens``, and to transformers'
    ``get_num_of_video_patches(...) // merge_size**2`` except where that one
    disagrees with its own processor: ``Qwen2VLVideoProcessor``'s ignores
    ``cap_pixels_per_frame``. ``sample_frame_indices`` gives the number of frames
    kept from a source video.
    """
    resized_height, resized_width = frame_size(num_frames, height, width, config)
    grid = video_grid(
        num_frames,
        resized_height,
        resized_width,
        patch_size=config.patch_size,
        temporal_patch_size=config.temporal_patch_size,
    )
    return grid.t * grid.h * grid.w // config.merge_size**2


def process_video(video: VideoInput, config: QwenVideoConfig, source_fps: float | None = None) -> QwenVideoInputs:
    """uint8 ``[F, Y, X, 3]`` frames (or RGB PIL images) -> ``QwenVideoInputs`` equal to transformers' output.

    ``source_fps``: the video's frame rate if known (transformers' ``video_metadata["fps"]``);
    None means transformers' default of 24. Raises ``ValueError`` for a wrong dtype,
    rank or channel count, zero frames, an aspect ratio over 200, too few frames
    left after sampling, or a non-positive ``source_fps``.
    """
    if source_fps is not None and not (isinstance(source_fps, (int, float)) and math.isfinite(source_fps)):
        raise ValueError(f"source_fps must be a finite number of frames per second or None, got {source_fps!r}")
    if source_fps is not None and source_fps <= 0:
        raise ValueError(f"source_fps must be positive, got {source_fps}")
    frames = to_frames_array(video)
    total_frames, height, width = frames.shape[:3]
    indices = sample_frame_indices(total_frames, source_fps, config)
    kept = frames[indices]
    size = frame_size(len(indices), height, width, config)
    resized = resize_like_torch(kept, size, config.resample)
    pixels = normalize(
        resized,
        image_mean=config.image_mean,
        image_std=config.image_std,
        rescale_factor=config.rescale_factor,
        backend="torchvision",
    )
    pixel_values = patchify(
        pixels,
        patch_size=config.patch_size,
        temporal_patch_size=config.temporal_patch_size,
        merge_size=config.merge_size,
    )
    grid = video_grid(
        len(indices), size[0], size[1], patch_size=config.patch_size, temporal_patch_size=config.temporal_patch_size
    )
    fps = metadata_fps(source_fps, config)
    return QwenVideoInputs(
        pixel_values=pixel_values,
        grid_thw=grid,
        num_tokens=grid.t * grid.h * grid.w // config.merge_size**2,
        frame_indices=indices,
        frames=resized,
        second_per_grid_ts=second_per_grid_ts(indices, total_frames, fps, config.temporal_patch_size),
        timestamps=frame_timestamps(indices, fps, config.temporal_patch_size),
    )
