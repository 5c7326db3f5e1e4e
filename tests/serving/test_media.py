"""Image URLs: data URLs, http(s) within a timeout and a size limit, local files only where allowed."""

from __future__ import annotations

import base64
import dataclasses

import numpy as np
import pytest
from PIL import Image

from mmjax.serving.media import MediaError, MediaLimits, load_image_url
from tests.serving.serving_fixtures import closed_port_url, data_url, file_server, image, write_png

LIMITS = MediaLimits(fetch_timeout_s=5.0, max_image_bytes=64 * 1024, max_image_pixels=512 * 512)
#: The test servers listen on 127.0.0.1, which the default limits refuse.
LOOPBACK_OK = dataclasses.replace(LIMITS, allow_private_addresses=True)


def _same_pixels(a: Image.Image, b: Image.Image) -> bool:
    return np.array_equal(np.asarray(a.convert("RGB")), np.asarray(b.convert("RGB")))


def test_a_data_url_decodes_to_the_same_pixels():
    assert _same_pixels(load_image_url(data_url(image(1)), LIMITS), image(1))


def test_grey_and_alpha_images_come_back_rgb():
    grey = Image.fromarray(np.arange(900, dtype=np.uint8).reshape(30, 30) % 251, "L")
    got = load_image_url(data_url(grey), LIMITS)
    assert got.mode == "RGB" and np.array_equal(np.asarray(got)[..., 0], np.asarray(grey))


@pytest.mark.parametrize("url, match", [
    ("data:image/png;base64,@@@@", r"not valid base64"),
    ("data:text/plain;base64," + base64.b64encode(b"hello").decode(), r"type is 'text/plain'; expected image"),
    ("data:image/png," + "abc", r"must look like data:image/png;base64"),
    ("data:image/png;base64," + base64.b64encode(b"not an image at all").decode(), r"does not decode as an image"),
    ("gopher://x/y.png", r"unsupported image URL scheme"),
])
def test_bad_data_urls_name_the_problem(url, match):
    with pytest.raises(MediaError, match=match):
        load_image_url(url, LIMITS, "message 0, part 0")


def test_too_many_pixels_are_refused_from_the_header():
    big = Image.new("RGB", (600, 600))  # 360,000 pixels > 512 x 512; compresses to a few KB
    with pytest.raises(MediaError, match=r"600x600 = 360000 pixels; the server allows at most 262144"):
        load_image_url(data_url(big), LIMITS)


def test_too_many_bytes_in_a_data_url_are_refused():
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (200, 200, 3), dtype=np.uint8))
    with pytest.raises(MediaError, match=r"at most 65536 per image"):
        load_image_url(data_url(noise), LIMITS)


def test_http_images_are_fetched_and_failures_named(tmp_path):
    write_png(str(tmp_path / "small.png"), image(2))
    noise = Image.fromarray(np.random.default_rng(1).integers(0, 256, (200, 200, 3), dtype=np.uint8))
    write_png(str(tmp_path / "big.png"), noise)
    with file_server(str(tmp_path)) as base:
        assert _same_pixels(load_image_url(f"{base}/small.png", LOOPBACK_OK), image(2))
        with pytest.raises(MediaError, match=r"image is \d+ bytes; the server allows at most 65536"):
            load_image_url(f"{base}/big.png", LOOPBACK_OK)
        with pytest.raises(MediaError, match=r"answered HTTP 404"):
            load_image_url(f"{base}/missing.png", LOOPBACK_OK)
    with pytest.raises(MediaError, match=r"^the image: could not fetch the image URL$"):
        load_image_url(closed_port_url(), LOOPBACK_OK)


def test_local_files_only_under_the_allowed_directory(tmp_path):
    inside = write_png(str(tmp_path / "allowed" / "a.png"), image(3))
    outside = write_png(str(tmp_path / "secret.png"), image(4))
    with pytest.raises(MediaError, match=r"file:// URLs are refused.*--allowed-local-media-path"):
        load_image_url(f"file://{inside}", LIMITS)
    allowed = MediaLimits(allowed_local_media_path=str(tmp_path / "allowed"))
    assert _same_pixels(load_image_url(f"file://{inside}", allowed), image(3))
    for sneaky in (f"file://{outside}", f"file://{tmp_path}/allowed/../secret.png"):
        with pytest.raises(MediaError, match=r"is outside the directory the server allows$"):
            load_image_url(sneaky, allowed)
