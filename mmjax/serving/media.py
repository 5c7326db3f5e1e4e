"""Images (and the bytes of videos) named by URL in chat messages: ``data:`` base64, ``http(s)`` fetched
within limits (see ``mmjax.serving.fetch``), local files only under a directory the operator allows.

Every failure is a ``MediaError`` (a ``ValueError``) that says which image and what was wrong,
raised before the image reaches the model; its text never holds a server path or a Python repr.
"""

from __future__ import annotations

import base64
import binascii
import errno
import io
import logging
import os
import stat
import urllib.parse

from PIL import Image

from mmjax.serving.fetch import fetch_media_bytes
from mmjax.serving.media_limits import DEFAULT_IMAGE_FORMATS, MediaBusy, MediaError, MediaKind, MediaLimits

__all__ = ["DEFAULT_IMAGE_FORMATS", "MediaBusy", "MediaError", "MediaLimits", "decode_image", "load_image_url",
           "load_url_bytes"]

log = logging.getLogger(__name__)


def load_image_url(url: str, limits: MediaLimits, where: str = "the image") -> Image.Image:
    """The RGB image behind ``url`` (``data:image/...;base64,``, ``http(s)://`` or ``file://``).

    ``where`` names the image in errors (e.g. "message 0, part 1").

    Raises:
      MediaError: an unknown scheme, bad base64, a refused, unreachable or oversized URL, a file
        outside ``allowed_local_media_path`` or not a regular file, bytes that do not decode as
        an image of an allowed format, too many pixels.
    """
    return decode_image(load_url_bytes(url, limits, where, "image"), limits, where)


def load_url_bytes(url: str, limits: MediaLimits, where: str, kind: MediaKind) -> bytes:
    """The encoded bytes behind an image or video URL (``data:``, ``http(s)://``, ``file://``), at most
    ``limits.max_bytes(kind)``.

    Raises:
      MediaError: as ``load_image_url``, before anything is decoded.
    """
    if not isinstance(url, str) or not url:
        raise MediaError(f"{where}: {kind}_url.url must be a non-empty string")
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme == "data":
        return _data_url_bytes(url, limits, where, kind)
    if scheme in ("http", "https"):
        return fetch_media_bytes(url, limits, where, kind)
    if scheme == "file":
        return _local_file(url, limits, where, kind)
    raise MediaError(f"{where}: unsupported {kind} URL scheme; expected a data:{kind}/...;base64 URL, "
                     "an http(s) URL, or a file:// URL (with --allowed-local-media-path)")


def decode_image(data: bytes, limits: MediaLimits, where: str = "the image") -> Image.Image:
    """Decode encoded image bytes to RGB: only ``limits.image_formats``, refusing more than
    ``limits.max_image_pixels`` from the header, before the pixels are decoded."""
    try:
        image = Image.open(io.BytesIO(data), formats=limits.image_formats)
        width, height = image.size
        if width * height > limits.max_image_pixels:
            raise MediaError(f"{where} is {width}x{height} = {width * height} pixels; the server allows at "
                             f"most {limits.max_image_pixels}")
        image.load()
        return image.convert("RGB") if image.mode != "RGB" else image
    except MediaError:
        raise
    except Image.UnidentifiedImageError:
        raise MediaError(f"{where} does not decode as an image of a format the server takes "
                         f"({', '.join(limits.image_formats)})") from None
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError,
            MemoryError) as err:
        log.info("%s: image decoding failed: %s: %s", where, type(err).__name__, err)
        raise MediaError(f"{where} does not decode as an image ({len(data)} bytes)") from None


_DATA_URL_EXAMPLE = {"image": "data:image/png;base64,<data>", "video": "data:video/mp4;base64,<data>"}


def _data_url_bytes(url: str, limits: MediaLimits, where: str, kind: MediaKind) -> bytes:
    header, sep, payload = url.partition(",")
    if not sep or not header.lower().endswith(";base64"):
        raise MediaError(f"{where}: a data URL must look like {_DATA_URL_EXAMPLE[kind]}")
    mime = header[5:-7].lower()
    if mime and not mime.startswith(f"{kind}/"):
        raise MediaError(f"{where}: the data URL's type is {mime[:40]!r}; expected {kind}/*")
    cap = limits.max_bytes(kind)
    if len(payload) * 3 // 4 > cap:
        raise MediaError(f"{where}: the data URL holds about {len(payload) * 3 // 4} bytes; the server allows "
                         f"at most {cap} per {kind}")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise MediaError(f"{where}: the data URL is not valid base64") from None


def _local_file(url: str, limits: MediaLimits, where: str, kind: MediaKind) -> bytes:
    """A regular file under the allowed directory, read to at most ``limits.max_bytes(kind)`` (never a
    FIFO, a device or a directory: opened non-blocking and checked before a byte is read)."""
    if limits.allowed_local_media_path is None:
        raise MediaError(f"{where}: file:// URLs are refused; the server must be started with "
                         f"--allowed-local-media-path DIR to read {kind}s under DIR")
    try:
        path = os.path.realpath(urllib.parse.unquote(urllib.parse.urlparse(url).path, errors="strict"))
    except (ValueError, UnicodeError):
        raise MediaError(f"{where}: the file:// URL is not a valid path") from None
    root = os.path.realpath(limits.allowed_local_media_path)
    if os.path.commonpath([path, root]) != root:
        raise MediaError(f"{where}: the file:// URL is outside the directory the server allows")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NOCTTY", 0))
    except OSError as err:
        reason = "does not exist" if err.errno in (errno.ENOENT, errno.ENOTDIR) else "cannot be read"
        raise MediaError(f"{where}: the file:// URL {reason}") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise MediaError(f"{where}: the file:// URL does not name a regular file")
    cap = limits.max_bytes(kind)
    with os.fdopen(fd, "rb", buffering=0) as f:
        if info.st_size > cap:
            raise MediaError(f"{where}: the file is {info.st_size} bytes; the server allows at most {cap}")
        chunks, size = [], 0
        while size <= cap and (chunk := f.read(cap + 1 - size)):
            chunks.append(chunk)
            size += len(chunk)
    data = b"".join(chunks)
    if len(data) > cap:  # it grew since fstat
        raise MediaError(f"{where}: the file is larger than the {cap} bytes the server allows")
    return data
