"""What the server accepts as an image or a video (``MediaLimits``) and the errors of loading one."""

from __future__ import annotations

import dataclasses
from typing import Literal

#: What a media URL holds.
MediaKind = Literal["image", "video"]

#: The image formats opened by default: the common photo formats (a phone's multi-picture JPEG opens
#: as JPEG). Pillow knows dozens more, each a decoder an attacker could reach.
DEFAULT_IMAGE_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP")
#: The video containers opened by default (recognised by their first bytes; only their demuxer runs).
DEFAULT_VIDEO_FORMATS = ("mp4", "webm")
#: The video codecs decoded by default: what phones, browsers and encoders commonly write.
DEFAULT_VIDEO_CODECS = ("h264", "hevc", "vp8", "vp9", "av1", "mpeg4")


class MediaError(ValueError):
    """An image or a video could not be used: not decodable, unreachable, too large, or not allowed.

    The message is for the client: it says what was wrong with the request's image, never
    what the server can reach, its paths, or a Python object.
    """


class MediaBusy(MediaError):
    """The server is fetching as many images as it allows at once: try again shortly (HTTP 503)."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class MediaLimits:
    """What the server accepts as an image or a video.

    Attributes:
      fetch_timeout_s: seconds one ``http(s)`` image may take in all: resolving, connecting, every
        redirect and every byte (one deadline, not a timeout per read).
      max_image_bytes: most bytes of one encoded image (a ``data:`` URL's payload, a download, a file).
      max_image_pixels: most pixels (width x height) of one decoded image; checked from the
        header, before the pixels are decoded.
      allowed_local_media_path: a directory under which ``file://`` URLs may be read; None refuses them.
      allow_url_fetch: whether ``http(s)`` URLs are fetched at all.
      allowed_media_domains: hosts ``http(s)`` URLs may name (a host matches its own entry and the
        entries it is below: ``example.com`` allows ``img.example.com``); None allows any host.
      allow_private_addresses: fetch from loopback, private, link-local and other non-public
        addresses too (for a trusted network only); off, such an address is refused.
      max_redirects: most redirects one fetch follows (each one checked as the first URL was).
      max_fetches_in_flight: most ``http(s)`` fetches this process runs at once; beyond it a
        request waits within its deadline, then is refused with ``MediaBusy``.
      image_formats: the Pillow formats decoded; any other is refused before its decoder runs.
      max_video_bytes: most bytes of one encoded video (a ``data:`` URL's payload, a download, a file).
      max_video_frames: most frames of one video; checked from the container's header before
        decoding, and again while decoding (a header may not say, or may lie).
      max_video_pixels: most frames x width x height of one video, checked as the frames are.
      video_formats: the containers opened (``"mp4"``: MP4/QuickTime, ``"webm"``: WebM/Matroska);
        any other is refused before a demuxer runs.
      video_codecs: the FFmpeg decoders run (by codec name); a stream of any other is refused.
    """

    fetch_timeout_s: float = 10.0
    max_image_bytes: int = 20 * 2**20
    max_image_pixels: int = 4096 * 4096
    allowed_local_media_path: str | None = None
    allow_url_fetch: bool = True
    allowed_media_domains: tuple[str, ...] | None = None
    allow_private_addresses: bool = False
    max_redirects: int = 3
    max_fetches_in_flight: int = 16
    image_formats: tuple[str, ...] = DEFAULT_IMAGE_FORMATS
    max_video_bytes: int = 64 * 2**20
    max_video_frames: int = 768
    max_video_pixels: int = 2**27  # 400 MiB of decoded RGB frames: 64 frames of 1080p, 437 of 640x480
    video_formats: tuple[str, ...] = DEFAULT_VIDEO_FORMATS
    video_codecs: tuple[str, ...] = DEFAULT_VIDEO_CODECS

    def __post_init__(self) -> None:
        for name in ("max_image_bytes", "max_image_pixels", "max_fetches_in_flight", "max_video_bytes",
                     "max_video_frames", "max_video_pixels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if isinstance(self.max_redirects, bool) or not isinstance(self.max_redirects, int) or self.max_redirects < 0:
            raise ValueError(f"max_redirects must be an int >= 0, got {self.max_redirects!r}")
        if not self.fetch_timeout_s > 0:
            raise ValueError(f"fetch_timeout_s must be > 0, got {self.fetch_timeout_s!r}")
        for name in ("allowed_media_domains", "image_formats", "video_formats", "video_codecs"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, tuple):
                object.__setattr__(self, name, tuple(value))
        object.__setattr__(self, "image_formats", tuple(f.upper() for f in self.image_formats))
        object.__setattr__(self, "video_formats", tuple(f.lower() for f in self.video_formats))
        object.__setattr__(self, "video_codecs", tuple(c.lower() for c in self.video_codecs))

    def max_bytes(self, kind: MediaKind) -> int:
        """Most encoded bytes of one ``kind`` item."""
        return self.max_video_bytes if kind == "video" else self.max_image_bytes
