"""Images named by URL in chat messages: ``data:`` base64, ``http(s)`` fetched within limits, local files
only under a directory the operator allows.

Every failure is a ``MediaError`` (a ``ValueError``) that says which image and what was wrong,
raised before the image reaches the model.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import io
import os
import urllib.error
import urllib.parse
import urllib.request

from PIL import Image


class MediaError(ValueError):
    """An image could not be used: not decodable, unreachable, too large, or not allowed."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class MediaLimits:
    """What the server accepts as an image.

    Attributes:
      fetch_timeout_s: seconds an ``http(s)`` image may take to arrive (connect and read).
      max_image_bytes: most bytes of one encoded image (a ``data:`` URL's payload or a download).
      max_image_pixels: most pixels (width x height) of one decoded image; checked from the
        header, before the pixels are decoded.
      allowed_local_media_path: a directory under which ``file://`` URLs may be read; None refuses them.
    """

    fetch_timeout_s: float = 10.0
    max_image_bytes: int = 20 * 2**20
    max_image_pixels: int = 4096 * 4096
    allowed_local_media_path: str | None = None


def load_image_url(url: str, limits: MediaLimits, where: str = "the image") -> Image.Image:
    """The RGB image behind ``url`` (``data:image/...;base64,``, ``http(s)://`` or ``file://``).

    ``where`` names the image in errors (e.g. "message 0, part 1").

    Raises:
      MediaError: an unknown scheme, bad base64, an unreachable or oversized URL, a file outside
        ``allowed_local_media_path``, bytes that do not decode as an image, too many pixels.
    """
    if not isinstance(url, str) or not url:
        raise MediaError(f"{where}: image_url.url must be a non-empty string")
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme == "data":
        data = _data_url_bytes(url, limits, where)
    elif scheme in ("http", "https"):
        data = _download(url, limits, where)
    elif scheme == "file":
        data = _local_file(url, limits, where)
    else:
        raise MediaError(f"{where}: unsupported image URL {url[:60]!r}; expected a data:image/...;base64 URL, "
                         "an http(s) URL, or a file:// URL (with --allowed-local-media-path)")
    return decode_image(data, limits, where)


def decode_image(data: bytes, limits: MediaLimits, where: str = "the image") -> Image.Image:
    """Decode encoded image bytes to RGB, refusing more than ``limits.max_image_pixels`` before decoding."""
    try:
        image = Image.open(io.BytesIO(data))
        width, height = image.size
        if width * height > limits.max_image_pixels:
            raise MediaError(f"{where} is {width}x{height} = {width * height} pixels; the server allows at "
                             f"most {limits.max_image_pixels}")
        image.load()
    except MediaError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise MediaError(f"{where} does not decode as an image ({len(data)} bytes): {err}") from err
    return image.convert("RGB") if image.mode != "RGB" else image


def _data_url_bytes(url: str, limits: MediaLimits, where: str) -> bytes:
    header, sep, payload = url.partition(",")
    if not sep or not header.lower().endswith(";base64"):
        raise MediaError(f"{where}: a data URL must look like data:image/png;base64,<data>; got {url[:40]!r}")
    mime = header[5:-7].lower()
    if mime and not mime.startswith("image/"):
        raise MediaError(f"{where}: the data URL's type is {mime!r}; expected image/*")
    if len(payload) * 3 // 4 > limits.max_image_bytes:
        raise MediaError(f"{where}: the data URL holds about {len(payload) * 3 // 4} bytes; the server allows "
                         f"at most {limits.max_image_bytes} per image")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as err:
        raise MediaError(f"{where}: the data URL is not valid base64: {err}") from err


def _download(url: str, limits: MediaLimits, where: str) -> bytes:
    request = urllib.request.Request(url, headers={"User-Agent": "mmjax"})
    try:
        with urllib.request.urlopen(request, timeout=limits.fetch_timeout_s) as response:  # noqa: S310 (http(s) only)
            declared = response.headers.get("Content-Length")
            if declared is not None and declared.isdigit() and int(declared) > limits.max_image_bytes:
                raise MediaError(f"{where}: {url} is {declared} bytes; the server allows at most "
                                 f"{limits.max_image_bytes} per image")
            data = response.read(limits.max_image_bytes + 1)
    except MediaError:
        raise
    except (urllib.error.URLError, OSError, ValueError) as err:  # refused, unknown host, timeout, HTTP error
        raise MediaError(f"{where}: could not fetch {url} within {limits.fetch_timeout_s} s: {err}") from err
    if len(data) > limits.max_image_bytes:
        raise MediaError(f"{where}: {url} is larger than the {limits.max_image_bytes} bytes the server allows "
                         "per image")
    return data


def _local_file(url: str, limits: MediaLimits, where: str) -> bytes:
    if limits.allowed_local_media_path is None:
        raise MediaError(f"{where}: file:// URLs are refused; the server must be started with "
                         "--allowed-local-media-path DIR to read images under DIR")
    path = os.path.realpath(urllib.parse.unquote(urllib.parse.urlparse(url).path))
    root = os.path.realpath(limits.allowed_local_media_path)
    if os.path.commonpath([path, root]) != root:
        raise MediaError(f"{where}: {path} is outside the allowed directory {root}")
    try:
        size = os.path.getsize(path)
        if size > limits.max_image_bytes:
            raise MediaError(f"{where}: {path} is {size} bytes; the server allows at most {limits.max_image_bytes}")
        with open(path, "rb") as f:
            return f.read()
    except OSError as err:
        raise MediaError(f"{where}: cannot read {path}: {err}") from err
