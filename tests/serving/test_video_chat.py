"""Videos in chat messages: into ``multi_modal_data["video"]`` for a model that takes them, a 400 naming the part
for one that does not (the LLaVA demo model), ceilings before decoding."""

from __future__ import annotations

import dataclasses
import json
import types
import urllib.error
import urllib.request

import numpy as np
import pytest
from flax import nnx

from mmjax.registry import MULTIMODAL_REGISTRY, MultiModalInputs, SupportsMultiModal
from mmjax.serving import video_decode
from mmjax.serving.chat import chat_prompt
from mmjax.serving.media import MediaLimits
from tests.engine.engine_fixtures import LLAVA, load
from tests.serving.video_fixtures import encode_video, moving_frames, pyav_decode, video_data_url

pytest.importorskip("av", reason="the video extra (pip install 'mmjax[video]') is not installed")

#: A parts template that marks each video, so the rendered text shows where it went.
TEMPLATE = ("{% for m in messages %}{{ m['role'] }}:{% for p in m['content'] %}{% if p['type'] == 'video' %}"
            "<video>{% elif p['type'] == 'text' %}{{ p['text'] }}{% endif %}{% endfor %}\n{% endfor %}")
MEDIA = MediaLimits(max_video_frames=8, max_video_pixels=8 * 32 * 48)


@MULTIMODAL_REGISTRY.register_input_mapper("video", lambda ctx, data: MultiModalInputs())
class TakesVideo(nnx.Module, SupportsMultiModal):
    pass


@pytest.fixture(scope="module")
def video_llm():
    """The LLaVA demo checkpoint's tokenizer and config, with a model class that takes two videos a prompt."""
    llava = load(LLAVA)
    config = dataclasses.replace(llava.model_config, model_cls=TakesVideo, limit_mm_per_prompt={"video": 2})
    return types.SimpleNamespace(model_config=config, mm_registry=MULTIMODAL_REGISTRY, tokenizer=llava.tokenizer,
                                 hf_config=llava.hf_config)


def video_part(url: str) -> dict:
    return {"type": "video_url", "video_url": {"url": url}}


def user(*parts) -> list[dict]:
    return [{"role": "user", "content": list(parts)}]


def test_video_urls_become_the_frames_pyav_decodes_with_their_fps(video_llm):
    mp4, webm = encode_video(moving_frames(8), "mp4"), encode_video(moving_frames(6), "webm", fps=25)
    messages = user(video_part(video_data_url(mp4)), {"type": "text", "text": "and"},
                    video_part(video_data_url(webm, "video/webm")))
    prompt = chat_prompt(video_llm, messages, chat_template=TEMPLATE, media=MEDIA)
    assert prompt["prompt"].startswith("user:<video>and<video>")
    (first, first_meta), (second, second_meta) = prompt["multi_modal_data"]["video"]
    np.testing.assert_array_equal(first, pyav_decode(mp4))
    np.testing.assert_array_equal(second, pyav_decode(webm))
    assert (first_meta, second_meta) == ({"fps": 12.0}, {"fps": 25.0})
    one = chat_prompt(video_llm, user(video_part(video_data_url(mp4))), chat_template=TEMPLATE, media=MEDIA)
    assert isinstance(one["multi_modal_data"]["video"], tuple)  # one video: not a list


def test_a_too_long_video_is_refused_naming_the_part_before_decoding(video_llm, monkeypatch):
    monkeypatch.setattr(video_decode, "_decode_frames", lambda *a: pytest.fail("decoded past a ceiling"))
    long_clip = video_data_url(encode_video(moving_frames(9), "mp4"))
    with pytest.raises(ValueError, match=r"message 0, part 1: the video has 9 frames \(from its header\); the server "
                                         r"allows at most 8 \(max_video_frames\)"):
        chat_prompt(video_llm, user({"type": "text", "text": "hi"}, video_part(long_clip)), chat_template=TEMPLATE,
                    media=MEDIA)


def test_more_videos_than_the_limit_are_refused_before_any_fetch(video_llm):
    never = video_part("http://127.0.0.1:9/never-fetched.mp4")
    with pytest.raises(ValueError, match=r"the messages hold 3 videos; this model takes at most 2 per prompt"):
        chat_prompt(video_llm, user(never, never, never), chat_template=TEMPLATE, media=MEDIA)


def _post(server, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(server.url + "/v1/chat/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_the_server_answers_400_naming_the_part_for_a_model_without_video(server):
    clip = video_data_url(encode_video(moving_frames(8), "mp4"))
    messages = user({"type": "text", "text": "What happens?"}, video_part(clip))
    status, reply = _post(server, {"model": "tiny-llava", "messages": messages, "max_tokens": 2})
    assert status == 400, reply
    assert reply["error"]["param"] == "messages"
    assert reply["error"]["message"].startswith("message 0, part 1: this model takes no video input (no video input "
                                                "mapper is registered for LlavaForConditionalGeneration)")
    status, reply = _post(server, {"model": "tiny-llava", "messages": messages, "max_tokens": 2,
                                   "mm_processor_kwargs": {"max_video_frames": 10**6}})
    assert status == 400 and reply["error"]["param"] == "mm_processor_kwargs.max_video_frames"
    assert "a request may lower the server's limit, not raise it" in reply["error"]["message"]
