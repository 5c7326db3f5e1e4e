"""Video data as vLLM takes it, checked and brought to one form: ``VideoItem(frames, metadata)``.

vLLM's forms (``multi_modal_data={"video": ...}``):

* one video: a uint8 array ``[F, H, W, 3]``, a list of PIL images (its frames), or either of them
  with its metadata, ``(frames, {"fps": 30.0})``;
* several videos: a list of those, or a uint8 array ``[V, F, H, W, 3]``.

Of the metadata only ``fps`` (the source frame rate) is used; vLLM's other keys, which describe how
its own loader sampled the file (``total_num_frames``, ``frames_indices``, ``duration``,
``video_backend``, ``do_sample_frames``), are accepted and dropped: the model's video processor
samples the frames it is given. Any other key is refused, so that a misspelt ``"FPS"`` is not lost.

Every check runs on shapes only, before any pixel work; each error names the video.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, NamedTuple

import numpy as np
from PIL import Image

#: Metadata keys of vLLM's video loaders that mmjax accepts and does not use.
IGNORED_METADATA_KEYS = frozenset({"total_num_frames", "frames_indices", "duration", "video_backend",
                                   "do_sample_frames"})
#: Metadata keys mmjax uses.
USED_METADATA_KEYS = frozenset({"fps"})


class VideoItem(NamedTuple):
    """One video: its frames and the metadata the model may use (a tuple, like vLLM's ``(frames, metadata)``).

    Attributes:
      frames: uint8 ``[F, H, W, 3]`` (RGB), ``F, H, W >= 1``.
      metadata: read-only; ``{"fps": float}`` when the source frame rate is known, else empty.
    """

    frames: np.ndarray
    metadata: Mapping[str, float]

    @property
    def fps(self) -> float | None:
        """The source frame rate, or None when unknown (models then assume their processor's default)."""
        return self.metadata.get("fps")

    def __repr__(self) -> str:
        return f"VideoItem(frames={self.frames.dtype}{list(self.frames.shape)}, metadata={dict(self.metadata)})"

    @property
    def num_pixels(self) -> int:
        """Frames x height x width."""
        return int(np.prod(self.frames.shape[:3]))


def _is_frame_list(data: object) -> bool:
    return isinstance(data, list) and bool(data) and all(isinstance(f, Image.Image) for f in data)


def _is_one_video(data: object) -> bool:
    if isinstance(data, (VideoItem, tuple)) or _is_frame_list(data):
        return True
    return isinstance(data, np.ndarray) and data.ndim != 5


def split_videos(data: object) -> list[Any]:
    """The videos ``data`` holds, each still in the user's form (nothing is checked or copied).

    A list of PIL images is one video; a 5-D array or a list of anything else is several.
    """
    if _is_one_video(data):
        return [data]
    if isinstance(data, np.ndarray):  # [V, F, H, W, 3]
        return list(data)
    if isinstance(data, list):
        return data
    return [data]


def as_video_item(video: object, index: int = 0) -> VideoItem:
    """One video in any of vLLM's forms, checked, as a ``VideoItem``.

    PIL frames are converted to RGB and stacked; an array is used as it is (not copied).

    Raises:
      TypeError: not an array, a list of PIL images or a ``(frames, metadata dict)`` pair.
      ValueError: not uint8; not ``[F, H, W, 3]``; no frames; zero-size frames; PIL frames of
        different sizes; an fps that is not a finite number > 0; a metadata key mmjax does not know.
    """
    where = f"video {index}"
    if isinstance(video, VideoItem):
        return video
    metadata: Mapping[str, Any] = {}
    if isinstance(video, tuple):
        if len(video) != 2 or not isinstance(video[1], Mapping):
            raise TypeError(f"{where}: a video with metadata is a pair (frames, {{'fps': ...}}), got a tuple of "
                            f"{len(video)} element(s) whose second is {type(video[-1]).__name__ if video else '-'}")
        video, metadata = video
    return VideoItem(_frames(video, where), _metadata(metadata, where))


def _frames(video: object, where: str) -> np.ndarray:
    if _is_frame_list(video):
        return _stack_pil_frames(video, where)
    if isinstance(video, list) and not video:
        raise ValueError(f"{where} has 0 frames; a video needs at least one")
    if not isinstance(video, np.ndarray):
        raise TypeError(f"{where} is a {type(video).__name__}; expected a uint8 numpy array [frames, height, width, "
                        f"3], a list of PIL images, or either with its metadata as (frames, {{'fps': ...}})")
    if video.dtype != np.uint8:
        raise ValueError(f"{where} has dtype {video.dtype}; expected uint8 frames (0-255 RGB)")
    if video.ndim != 4:
        hint = " (one frame? add a leading frame axis)" if video.ndim == 3 else ""
        raise ValueError(f"{where} has shape {video.shape} (rank {video.ndim}); expected [frames, height, width, "
                         f"3] (rank 4){hint}")
    if video.shape[-1] != 3:
        raise ValueError(f"{where} has {video.shape[-1]} channels (shape {video.shape}); expected 3 (RGB)")
    if video.shape[0] == 0:
        raise ValueError(f"{where} has 0 frames; a video needs at least one")
    if 0 in video.shape[1:3]:
        raise ValueError(f"{where} has frames of size {video.shape[2]}x{video.shape[1]}; expected at least 1x1")
    return video


def _stack_pil_frames(frames: list[Image.Image], where: str) -> np.ndarray:
    first = frames[0].size
    for i, frame in enumerate(frames):
        if frame.size != first:
            raise ValueError(f"{where}: frame {i} is {frame.width}x{frame.height} but frame 0 is "
                             f"{first[0]}x{first[1]}; all frames of a video must have one size")
    if 0 in first:
        raise ValueError(f"{where} has frames of size {first[0]}x{first[1]}; expected at least 1x1")
    return np.stack([_rgb(frame, i, where) for i, frame in enumerate(frames)])


def _rgb(frame: Image.Image, index: int, where: str) -> np.ndarray:
    """uint8 ``[H, W, 3]`` of one PIL frame (decoded here if opened lazily)."""
    try:
        return np.asarray(frame if frame.mode == "RGB" else frame.convert("RGB"))
    except (OSError, SyntaxError, ValueError) as err:
        raise ValueError(f"{where}: frame {index} (mode {frame.mode}) could not be decoded as RGB: {err}") from err


def _metadata(metadata: Mapping[str, Any], where: str) -> Mapping[str, float]:
    unknown = sorted(set(metadata) - USED_METADATA_KEYS - IGNORED_METADATA_KEYS)
    if unknown:
        raise ValueError(f"{where}: unknown metadata key(s) {unknown}; mmjax uses 'fps' and ignores "
                         f"{sorted(IGNORED_METADATA_KEYS)}")
    fps = metadata.get("fps")
    if fps is None:
        return MappingProxyType({})
    if isinstance(fps, bool) or not isinstance(fps, (int, float, np.integer, np.floating)) \
            or not math.isfinite(fps) or fps <= 0:
        raise ValueError(f"{where}: metadata fps must be a finite number > 0 (frames per second), got {fps!r}")
    return MappingProxyType({"fps": float(fps)})


def parse_video_data(data: object) -> VideoItem | None | list[VideoItem | None]:
    """``multi_modal_data["video"]`` in the form hooks receive: a ``VideoItem`` for one video, a list for
    several (a list stays a list, so one video given as ``[frames]`` stays a list of one).

    None (an item given by its id alone, ``multi_modal_uuids``) is kept as it is.

    Raises:
      TypeError / ValueError: see ``as_video_item``; ValueError for an empty list.
    """
    if isinstance(data, list) and not data:
        raise ValueError("empty list of video items: pass at least one, or leave the key out")
    if data is None or _is_one_video(data):
        return None if data is None else as_video_item(data)
    return [None if v is None else as_video_item(v, i) for i, v in enumerate(split_videos(data))]


def video_items(data: object) -> list[VideoItem]:
    """The videos of ``multi_modal_data["video"]`` (any of vLLM's forms), checked, in order.

    What a model's video mapper or input processor calls to read its data.
    """
    parsed = parse_video_data(data)
    items = parsed if isinstance(parsed, list) else [parsed]
    if any(item is None for item in items):
        raise ValueError("a video item is None: give the video, or its id with a processor cache that holds it")
    return items
