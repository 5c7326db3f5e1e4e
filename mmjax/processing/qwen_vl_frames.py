"""Which frames of a video the Qwen video processors keep, and the times the models see them at.

Frame sampling follows transformers 5.25's video processors:

* ``Qwen2VLVideoProcessor`` (Qwen2-VL, Qwen2.5-VL) keeps every frame by default
  (``do_sample_frames = False``). When sampling, ``num_frames`` (rounded to a
  multiple of ``temporal_patch_size``) or ``fps`` frames per second of the
  source, floored to a multiple of ``temporal_patch_size`` and clamped to
  ``[min_frames, max_frames]`` and the video's length, are taken at
  ``torch.arange(0, total, total / n).int()`` (float32, rounded as torch's
  AVX2 kernel rounds);
* ``Qwen3VLVideoProcessor`` samples by default, ``fps = 2`` frames per second
  of the source, at least ``min_frames = 4`` (never more than the video has),
  at ``round(linspace(0, total - 1, n))``.

A bare array has no frame rate: transformers then takes 24 fps, for Qwen3-VL's
sampling and timestamps and for Qwen2.5-VL's ``second_per_grid_ts``.

Times: Qwen2.5-VL's M-RoPE takes ``second_per_grid_ts = temporal_patch_size /
sampled_fps`` per video, with ``sampled_fps = kept / total * fps``. Qwen3-VL's
prompt carries one ``<t seconds>`` per temporal patch: the mean of the times of
its first and last frame (``frame index / fps``, the last frame repeated to
fill the patch), written with one decimal.
"""

from __future__ import annotations

import math

import numpy as np

from mmjax.processing.qwen_vl_config import QwenVideoConfig

#: The frame rate transformers assumes for a video that comes without one.
DEFAULT_SOURCE_FPS = 24


#: Lanes of torch's ``Vectorized<float>`` on an AVX2 CPU, which decide how its float32 ``arange`` rounds.
_TORCH_FLOAT_LANES = 8


def _float32_arange_indices(total_frames: int, num_frames: int) -> np.ndarray:
    """``torch.arange(0, total, total / num_frames).int()`` as torch computes it on an AVX2 CPU.

    The length is ``ceil(total / step)`` in float64. torch's CPU kernel fills two
    8-lane vectors at a time: lane ``k`` of the vector starting at ``i0`` holds
    ``float32(float32(i0 * step) + k * step)``; the elements after the last such
    pair are ``float32(i * step)``. Truncated to integers. For long videos (ulp of
    the index near 1 / num_frames) the last bit decides the frame, and an AVX-512
    CPU (16 lanes) can then pick another one: transformers' own result depends on
    the CPU there; this follows AVX2.
    """
    step = total_frames / num_frames
    length = math.ceil(total_frames / step)
    index = np.arange(length, dtype=np.int64)
    lane = index % _TORCH_FLOAT_LANES
    base = ((index - lane) * step).astype(np.float32).astype(np.float64)
    vectorized = (base + lane * step).astype(np.float32)
    scalar = (index * step).astype(np.float32)
    in_vectors = index < length // (2 * _TORCH_FLOAT_LANES) * (2 * _TORCH_FLOAT_LANES)
    return np.where(in_vectors, vectorized, scalar).astype(np.int64)


def _qwen2_vl_indices(total_frames: int, source_fps: float | None, config: QwenVideoConfig) -> np.ndarray:
    """``Qwen2VLVideoProcessor.sample_frames``."""
    num_frames, fps, tps = config.num_frames, config.fps, config.temporal_patch_size
    if fps is not None and num_frames is not None:
        raise ValueError("`num_frames` and `fps` are mutually exclusive: set one of them to None")
    if num_frames is not None:
        num_frames = round(num_frames / tps) * tps
    elif fps is not None:
        if source_fps is None:
            raise ValueError(
                "sampling at `fps` frames per second needs the video's frame rate: pass source_fps, "
                "or sample a fixed `num_frames`"
            )
        max_frames = math.floor(min(config.max_frames, total_frames) / tps) * tps
        wanted = min(max(total_frames / source_fps * fps, config.min_frames), max_frames, total_frames)
        num_frames = math.floor(wanted / tps) * tps
    if num_frames is None:
        return np.arange(total_frames, dtype=np.int64)
    if num_frames > total_frames:
        raise ValueError(f"cannot sample {num_frames} frames from a video of {total_frames} frames")
    if num_frames <= 0:
        raise ValueError(
            f"a video of {total_frames} frames leaves 0 frames after sampling to a multiple of "
            f"temporal_patch_size={tps}"
        )
    return _float32_arange_indices(total_frames, num_frames)


def _qwen3_vl_indices(total_frames: int, source_fps: float | None, config: QwenVideoConfig) -> np.ndarray:
    """``Qwen3VLVideoProcessor.sample_frames``."""
    num_frames, fps = config.num_frames, config.fps
    if fps is not None and num_frames is not None:
        raise ValueError("`num_frames` and `fps` are mutually exclusive: set one of them to None")
    if num_frames is None and fps is not None:
        video_fps = DEFAULT_SOURCE_FPS if source_fps is None else source_fps
        num_frames = int(total_frames / video_fps * fps)
        num_frames = min(max(num_frames, config.min_frames), config.max_frames, total_frames)
    if num_frames is None:
        num_frames = min(max(total_frames, config.min_frames), config.max_frames)
    return np.linspace(0, total_frames - 1, num_frames).round().astype(np.int64)


def sample_frame_indices(total_frames: int, source_fps: float | None, config: QwenVideoConfig) -> np.ndarray:
    """int64 ``[F']``: the indices of the frames ``config``'s video processor keeps, in order (may repeat).

    ``source_fps``: the video's frame rate, or None if unknown. All frames when
    ``config.do_sample_frames`` is off.
    """
    if total_frames <= 0:
        raise ValueError(f"a video needs at least one frame, got {total_frames}")
    if not config.do_sample_frames:
        return np.arange(total_frames, dtype=np.int64)
    if config.family == "qwen2_vl":
        return _qwen2_vl_indices(total_frames, source_fps, config)
    return _qwen3_vl_indices(total_frames, source_fps, config)


def metadata_fps(source_fps: float | None, config: QwenVideoConfig) -> float | None:
    """The frame rate transformers' video metadata ends with: Qwen3-VL's sampling fills in 24 for an unknown one."""
    qwen3_samples_by_fps = config.do_sample_frames and config.num_frames is None and config.fps is not None
    if source_fps is None and config.family == "qwen3_vl" and qwen3_samples_by_fps:
        return DEFAULT_SOURCE_FPS
    return source_fps


def second_per_grid_ts(
    frame_indices: np.ndarray, total_frames: int, source_fps: float | None, temporal_patch_size: int
) -> float:
    """Qwen2.5-VL's seconds per temporal patch: ``temporal_patch_size / sampled_fps`` (``VideoMetadata.sampled_fps``).

    ``source_fps`` is the metadata's frame rate (``metadata_fps``); without one,
    ``sampled_fps`` is 24 whatever was sampled.
    """
    sampled_fps = DEFAULT_SOURCE_FPS if source_fps is None else len(frame_indices) / total_frames * source_fps
    return temporal_patch_size / sampled_fps


def frame_timestamps(frame_indices: np.ndarray, source_fps: float | None, temporal_patch_size: int) -> list[float]:
    """Qwen3-VL's time of each temporal patch, in seconds (``Qwen3VLProcessor._calculate_timestamps``).

    ``source_fps`` is the metadata's frame rate; None means 24. One value per
    ``temporal_patch_size`` frames, the last frame repeated to fill the last patch.
    """
    fps = DEFAULT_SOURCE_FPS if source_fps is None else source_fps
    indices = [int(i) for i in frame_indices]
    if len(indices) % temporal_patch_size:
        indices.extend(indices[-1] for _ in range(temporal_patch_size - len(indices) % temporal_patch_size))
    times = [idx / fps for idx in indices]
    return [(times[i] + times[i + temporal_patch_size - 1]) / 2 for i in range(0, len(times), temporal_patch_size)]


def qwen3_vl_video_prompt(
    timestamps: list[float],
    tokens_per_frame: int,
    *,
    video_token: str = "<|video_pad|>",
    vision_start: str = "<|vision_start|>",
    vision_end: str = "<|vision_end|>",
) -> str:
    """The text ``Qwen3VLProcessor`` puts in place of one video, one block per temporal patch.

    ``"<{t:.1f} seconds>" + vision_start + video_token * tokens_per_frame + vision_end``
    for each timestamp. It replaces the chat template's whole
    ``<|vision_start|><|video_pad|><|vision_end|>`` (transformers collapses that
    wrapper to the bare video token first), or a bare ``<|video_pad|>``.
    ``tokens_per_frame = grid_h * grid_w // merge_size**2``.
    """
    block = vision_start + video_token * tokens_per_frame + vision_end
    return "".join(f"<{t:.1f} seconds>" + block for t in timestamps)
