"""video_url parts: fetched like images, decoded with PyAV within ceilings read from the header first."""

from __future__ import annotations

import dataclasses
import sys

import numpy as np
import pytest

from mmjax.serving import video_decode
from mmjax.serving.media import MediaError, MediaLimits
from mmjax.serving.protocol import RequestRefused
from mmjax.serving.request_limits import lowered_media
from mmjax.serving.video_decode import decode_video, load_video_url
from tests.serving.serving_fixtures import file_server
from tests.serving.video_fixtures import encode_video, moving_frames, pyav_decode, video_data_url

pytest.importorskip("av", reason="the video extra (pip install 'mmjax[video]') is not installed")

LIMITS = MediaLimits(fetch_timeout_s=5.0, max_video_bytes=64 * 1024, max_video_frames=8,
                     max_video_pixels=8 * 32 * 48)
LOOPBACK_OK = dataclasses.replace(LIMITS, allow_private_addresses=True)


@pytest.fixture(scope="module", params=["mp4", "webm"])
def clip(request) -> tuple[str, bytes]:
    return request.param, encode_video(moving_frames(8, 32, 48), request.param, fps=12)


def never_decode(*args, **kwargs):
    raise AssertionError("frames were decoded although the header already exceeds a ceiling")


def test_a_data_url_decodes_to_the_frames_pyav_decodes_and_the_streams_fps(clip):
    container, data = clip
    frames, metadata = load_video_url(video_data_url(data, f"video/{container}"), LIMITS, "message 0, part 1")
    assert frames.dtype == np.uint8 and frames.shape == (8, 32, 48, 3)
    np.testing.assert_array_equal(frames, pyav_decode(data))
    assert metadata == {"fps": 12.0}


def test_a_video_from_a_local_http_server_and_a_file_url(clip, tmp_path):
    container, data = clip
    (tmp_path / f"clip.{container}").write_bytes(data)
    with file_server(str(tmp_path)) as base:
        frames, metadata = load_video_url(f"{base}/clip.{container}", LOOPBACK_OK, "message 0, part 0")
    np.testing.assert_array_equal(frames, pyav_decode(data))
    with pytest.raises(MediaError, match=r"message 0, part 0: the video URL resolves to a non-public \(loopback\) "
                                         r"address"):
        load_video_url(f"{base}/clip.{container}", LIMITS, "message 0, part 0")  # loopback refused by default
    local = dataclasses.replace(LIMITS, allowed_local_media_path=str(tmp_path))
    from_file, _ = load_video_url(f"file://{tmp_path}/clip.{container}", local)
    np.testing.assert_array_equal(from_file, frames)


def test_too_many_frames_are_refused_from_the_header_before_decoding(clip, monkeypatch):
    container, data = clip
    monkeypatch.setattr(video_decode, "_decode_frames", never_decode)
    fewer_frames = dataclasses.replace(LIMITS, max_video_frames=7)
    with pytest.raises(MediaError, match=r"message 0, part 1: the video has 8 frames \(from its header\); the server "
                                         r"allows at most 7 \(max_video_frames\)"):
        load_video_url(video_data_url(data), fewer_frames, "message 0, part 1")
    fewer_pixels = dataclasses.replace(LIMITS, max_video_pixels=8 * 32 * 48 - 1)
    with pytest.raises(MediaError, match=r"the video is 8 x 48x32 = 12288 pixels \(from its header\); the server "
                                         r"allows at most 12287 \(max_video_pixels\)"):
        decode_video(data, fewer_pixels, "message 0, part 1")


def test_a_header_that_does_not_say_is_caught_while_decoding(clip, monkeypatch):
    container, data = clip
    silent = lambda container, stream: video_decode.VideoHeader(48, 32, 12.0, None)  # noqa: E731
    monkeypatch.setattr(video_decode, "read_header", silent)
    with pytest.raises(MediaError, match=r"the video has more than 7 frames; the server allows at most 7 "
                                         r"\(max_video_frames\)"):
        decode_video(data, dataclasses.replace(LIMITS, max_video_frames=7), "v")
    with pytest.raises(MediaError, match=r"the video has more than 4608 pixels \(frames x width x height\); the "
                                         r"server allows at most 4608 \(max_video_pixels\)"):
        decode_video(data, dataclasses.replace(LIMITS, max_video_pixels=3 * 32 * 48), "v")


def test_containers_codecs_and_bytes_the_server_does_not_take(clip):
    container, data = clip
    with pytest.raises(MediaError, match=r"v is not a video in a container the server takes \(mp4, webm\)"):
        decode_video(b"\x00\x00\x00\x10garbage-not-a-video" * 4, LIMITS, "v")
    other = "webm" if container == "mp4" else "mp4"
    with pytest.raises(MediaError, match=rf"v is not a video in a container the server takes \({other}\)"):
        decode_video(data, dataclasses.replace(LIMITS, video_formats=(other,)), "v")
    codec = {"mp4": "mpeg4", "webm": "vp8"}[container]
    with pytest.raises(MediaError, match=rf"v: the video's codec is '{codec}'; the server decodes h264"):
        decode_video(data, dataclasses.replace(LIMITS, video_codecs=("h264",)), "v")
    with pytest.raises(MediaError, match=r"v does not decode as a video \(\d+ bytes\)"):
        decode_video(data[:60] + bytes(200), LIMITS, "v")
    with pytest.raises(MediaError, match=r"the data URL holds about \d+ bytes; the server allows at most 100 per "
                                         r"video"):
        load_video_url(video_data_url(data), dataclasses.replace(LIMITS, max_video_bytes=100), "v")
    with pytest.raises(MediaError, match=r"the data URL's type is 'image/png'; expected video/\*"):
        load_video_url(video_data_url(data, "image/png"), LIMITS, "v")


def test_without_pyav_a_clear_error_before_anything_is_fetched(monkeypatch):
    monkeypatch.setitem(sys.modules, "av", None)  # `import av` now raises ImportError
    with pytest.raises(MediaError, match=r"message 0, part 2: this server cannot decode videos: PyAV is not "
                                         r"installed \(pip install 'mmjax\[video\]'\)"):
        load_video_url("http://127.0.0.1:9/never-fetched.mp4", LIMITS, "message 0, part 2")


def test_a_request_may_lower_the_video_ceilings_never_raise_them():
    lowered = lowered_media(LIMITS, {"max_video_frames": 4, "max_video_pixels": 100, "max_video_bytes": 10})
    assert (lowered.max_video_frames, lowered.max_video_pixels, lowered.max_video_bytes) == (4, 100, 10)
    with pytest.raises(RequestRefused, match=r"mm_processor_kwargs.max_video_frames=9: must be in \(0, 8\]") as info:
        lowered_media(LIMITS, {"max_video_frames": 9})
    assert info.value.param == "mm_processor_kwargs.max_video_frames"
