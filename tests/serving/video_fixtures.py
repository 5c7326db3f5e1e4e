"""Small videos made with PyAV for the video_url tests, and what PyAV itself decodes from them."""

from __future__ import annotations

import base64
import io

import numpy as np

#: Encoders every PyAV wheel has: FFmpeg's own MPEG-4 part 2 for MP4, libvpx's VP8 for WebM.
CODECS = {"mp4": "mpeg4", "webm": "libvpx"}


def moving_frames(frames: int = 8, height: int = 32, width: int = 48) -> np.ndarray:
    """uint8 ``[frames, height, width, 3]``: a bright bar that moves one step per frame on a gradient."""
    y, x = np.mgrid[:height, :width]
    video = np.empty((frames, height, width, 3), np.uint8)
    for t in range(frames):
        video[t, ..., 0] = (x * 5) % 256
        video[t, ..., 1] = (y * 7) % 256
        video[t, ..., 2] = np.where((x // 4) == t % (width // 4), 250, 20)
    return video


def encode_video(frames: np.ndarray, container: str = "mp4", fps: int = 12) -> bytes:
    """``frames`` (uint8 ``[F, H, W, 3]``) encoded in ``container`` ("mp4" or "webm") at ``fps``."""
    import av

    buf = io.BytesIO()
    with av.open(buf, "w", format=container) as output:
        stream = output.add_stream(CODECS[container], rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for frame in frames:
            output.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        output.mux(stream.encode())
    return buf.getvalue()


def pyav_decode(data: bytes) -> np.ndarray:
    """The RGB frames PyAV decodes from ``data``, straight (the reference for mmjax's decoder)."""
    import av

    with av.open(io.BytesIO(data)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(container.streams.video[0])])


def video_data_url(data: bytes, mime: str = "video/mp4") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()
