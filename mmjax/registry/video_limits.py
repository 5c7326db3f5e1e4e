"""Ceilings on the videos a prompt may carry: frames, and frames x height x width, per video.

The model-wide ceilings are ``mm_processor_kwargs`` of the model config (set by whoever loads or
serves the model: ``mmjax.load(..., mm_processor_kwargs={"max_video_frames": 256})``, or
``mmjax serve --max-video-frames 256``), else the video plugin's defaults. A request's own
``mm_processor_kwargs`` may lower them for its videos, never raise them. They are checked on the
videos' shapes before any mapping.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from mmjax.registry.video_items import VideoItem

#: The ``mm_processor_kwargs`` keys of the ceilings.
CEILING_KEYS = ("max_video_frames", "max_video_pixels")
#: Defaults when the model config sets none: generous, for videos already in memory; a server sets its own.
DEFAULT_MAX_VIDEO_FRAMES = 4096
DEFAULT_MAX_VIDEO_PIXELS = 2**31  # 6 GiB of uint8 RGB frames


@dataclasses.dataclass(frozen=True)
class VideoCeilings:
    """Most frames, and most frames x height x width, of one video."""

    max_video_frames: int = DEFAULT_MAX_VIDEO_FRAMES
    max_video_pixels: int = DEFAULT_MAX_VIDEO_PIXELS

    def check(self, item: VideoItem, index: int) -> None:
        """Refuse ``item`` beyond a ceiling (``ValueError`` naming the video, its size and the kwarg)."""
        frames, height, width = item.frames.shape[:3]
        if frames > self.max_video_frames:
            raise ValueError(f"video {index} has {frames} frames; at most {self.max_video_frames} are allowed "
                             f"(mm_processor_kwargs max_video_frames)")
        if item.num_pixels > self.max_video_pixels:
            raise ValueError(f"video {index} has {frames} x {height} x {width} = {item.num_pixels} pixels; at most "
                             f"{self.max_video_pixels} are allowed (mm_processor_kwargs max_video_pixels)")


def _positive_int(value: Any, key: str, whose: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{whose} mm_processor_kwargs {key} must be an int >= 1, got {value!r}")
    return value


def video_ceilings(model_kwargs: Mapping[str, Any], request_kwargs: Mapping[str, Any] | None,
                   defaults: VideoCeilings = VideoCeilings()) -> VideoCeilings:
    """The ceilings in effect: the model's (else ``defaults``), lowered by the request's.

    Raises:
      ValueError: a ceiling that is not an int >= 1, or a request's above the model's.
    """
    model = {k: _positive_int(model_kwargs[k], k, "the model's") for k in CEILING_KEYS
             if model_kwargs.get(k) is not None}
    ceilings = dataclasses.replace(defaults, **model)
    lowered = {}
    for key in CEILING_KEYS:
        value = (request_kwargs or {}).get(key)
        if value is None:
            continue
        value, ceiling = _positive_int(value, key, "the request's"), getattr(ceilings, key)
        if value > ceiling:
            raise ValueError(f"mm_processor_kwargs {key}={value} is above the model's ceiling ({ceiling}); a "
                             f"request may only lower it")
        lowered[key] = value
    return dataclasses.replace(ceilings, **lowered)
