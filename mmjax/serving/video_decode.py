"""Videos named by URL in chat messages, decoded with PyAV (the optional extra ``pip install 'mmjax[video]'``).

A video is fetched like an image (``media.load_url_bytes``: ``data:video/...;base64``, ``http(s)``
through the SSRF-safe fetcher, ``file://`` under the allowed directory; at most ``max_video_bytes``),
then opened only if its first bytes say it is a container the server takes (MP4/QuickTime,
WebM/Matroska), with only that container's demuxer. Its first video stream must use a codec the
server takes; its frame count (``stream.frames``, else duration x frame rate), width and height are
read from the header and checked against ``max_video_frames`` and ``max_video_pixels`` before a
frame is decoded, and again as each frame is (a header may not say, or may lie).

The result is what ``multi_modal_data["video"]`` takes: ``(frames uint8[F, H, W, 3], {"fps": fps})``,
or the bare frames when the stream states no frame rate.
"""

from __future__ import annotations

import dataclasses
import io
import logging
from types import ModuleType
from typing import Any

import numpy as np

from mmjax.serving.media import load_url_bytes
from mmjax.serving.media_limits import MediaError, MediaLimits

log = logging.getLogger(__name__)

#: A decoded video as ``multi_modal_data["video"]`` takes it.
DecodedVideo = tuple[np.ndarray, dict[str, float]] | np.ndarray

#: Container -> the FFmpeg demuxer opened for it.
_DEMUXERS = {"mp4": "mp4", "webm": "webm"}
#: ISO base media (MP4, QuickTime) files start with a box of one of these types, after its 4-byte size.
_MP4_BOXES = (b"ftyp", b"moov", b"mdat", b"wide", b"free")
_EBML_MAGIC = b"\x1a\x45\xdf\xa3"  # WebM / Matroska


def require_av(where: str = "the video") -> ModuleType:
    """The ``av`` module (PyAV), or a ``MediaError`` saying how to install it."""
    try:
        import av
    except ImportError:
        raise MediaError(f"{where}: this server cannot decode videos: PyAV is not installed "
                         "(pip install 'mmjax[video]')") from None
    return av


def load_video_url(url: str, limits: MediaLimits, where: str = "the video") -> DecodedVideo:
    """The decoded video behind ``url``; PyAV's presence is checked before anything is fetched.

    Raises:
      MediaError: PyAV missing; the URL refused, unreachable or too large (as for images); see
        ``decode_video``.
    """
    require_av(where)
    return decode_video(load_url_bytes(url, limits, where, "video"), limits, where)


@dataclasses.dataclass(frozen=True)
class VideoHeader:
    """What a container says about its first video stream before any frame is decoded.

    ``frames``: the stream's frame count, else its duration x frame rate rounded, else None.
    """

    width: int
    height: int
    fps: float | None
    frames: int | None


def read_header(container: Any, stream: Any) -> VideoHeader:
    """The ``VideoHeader`` of ``stream`` in an open PyAV ``container``."""
    rate = stream.average_rate or stream.guessed_rate
    fps = float(rate) if rate else None
    frames = int(stream.frames) if stream.frames else None
    if frames is None and fps:
        if stream.duration and stream.time_base:
            frames = round(float(stream.duration * stream.time_base) * fps)
        elif container.duration:
            frames = round(container.duration / 1_000_000 * fps)  # AV_TIME_BASE: microseconds
    return VideoHeader(stream.codec_context.width, stream.codec_context.height, fps, frames or None)


def check_header(header: VideoHeader, limits: MediaLimits, where: str) -> None:
    """Refuse a video whose header already exceeds the ceilings (``MediaError`` naming the ceiling)."""
    width, height = header.width, header.height
    if width < 1 or height < 1:
        raise MediaError(f"{where}: the video stream states no frame size")
    if header.frames is not None and header.frames > limits.max_video_frames:
        raise MediaError(f"{where}: the video has {header.frames} frames (from its header); the server allows at "
                         f"most {limits.max_video_frames} (max_video_frames)")
    frames = header.frames or 1
    if frames * width * height > limits.max_video_pixels:
        raise MediaError(f"{where}: the video is {frames} x {width}x{height} = {frames * width * height} pixels "
                         f"(from its header); the server allows at most {limits.max_video_pixels} "
                         f"(max_video_pixels)")


def decode_video(data: bytes, limits: MediaLimits, where: str = "the video") -> DecodedVideo:
    """Decode an encoded video's first video stream to RGB frames, within ``limits``.

    Returns:
      ``(frames uint8[F, H, W, 3], {"fps": fps})``, or the frames alone when the stream states no rate.

    Raises:
      MediaError: PyAV missing; a container or codec the server does not take; no video stream;
        more frames or pixels than allowed (from the header, or found while decoding); data that
        does not decode.
    """
    av = require_av(where)
    demuxer = _demuxer(data, limits, where)
    try:
        with av.open(io.BytesIO(data), mode="r", format=demuxer) as container:
            stream = _video_stream(container, limits, where)
            header = read_header(container, stream)
            check_header(header, limits, where)
            frames = _decode_frames(container.decode(stream), header, limits, where)
    except MediaError:
        raise
    except (av.FFmpegError, OSError, ValueError, EOFError, MemoryError) as err:
        log.info("%s: video decoding failed: %s: %s", where, type(err).__name__, err)
        raise MediaError(f"{where} does not decode as a video ({len(data)} bytes)") from None
    return frames if header.fps is None else (frames, {"fps": header.fps})


def _demuxer(data: bytes, limits: MediaLimits, where: str) -> str:
    if data[:4] == _EBML_MAGIC:
        container = "webm"
    elif data[4:8] in _MP4_BOXES:
        container = "mp4"
    else:
        container = None
    if container is None or container not in limits.video_formats:
        raise MediaError(f"{where} is not a video in a container the server takes "
                         f"({', '.join(limits.video_formats)})")
    return _DEMUXERS[container]


def _video_stream(container: Any, limits: MediaLimits, where: str) -> Any:
    if not container.streams.video:
        raise MediaError(f"{where}: the file holds no video stream")
    stream = container.streams.video[0]
    codec = stream.codec_context.codec.canonical_name
    if codec not in limits.video_codecs:
        raise MediaError(f"{where}: the video's codec is {codec[:40]!r}; the server decodes "
                         f"{', '.join(limits.video_codecs)}")
    return stream


def _decode_frames(decoded: Any, header: VideoHeader, limits: MediaLimits, where: str) -> np.ndarray:
    """uint8 ``[F, H, W, 3]``, stopping at the first frame past a ceiling."""
    width, height = header.width, header.height
    frames: list[np.ndarray] = []
    for frame in decoded:
        if (frame.width, frame.height) != (width, height):
            raise MediaError(f"{where}: the video changes frame size from {width}x{height} to "
                             f"{frame.width}x{frame.height} at frame {len(frames)}")
        if len(frames) + 1 > limits.max_video_frames:
            raise MediaError(f"{where}: the video has more than {limits.max_video_frames} frames; the server "
                             f"allows at most {limits.max_video_frames} (max_video_frames)")
        if (len(frames) + 1) * width * height > limits.max_video_pixels:
            raise MediaError(f"{where}: the video has more than {limits.max_video_pixels} pixels (frames x width "
                             f"x height); the server allows at most {limits.max_video_pixels} (max_video_pixels)")
        frames.append(frame.to_ndarray(format="rgb24"))
    if not frames:
        raise MediaError(f"{where}: the video stream holds no frames")
    return np.stack(frames)
