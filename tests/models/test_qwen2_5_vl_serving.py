"""Qwen2.5-VL in ``mmjax.chat`` and the OpenAI-compatible server, with the checkpoint's own chat template.

The rendered prompt equals transformers' ``apply_chat_template``; the server (on 127.0.0.1) answers a
chat with an image, streams it and gives logprobs, each equal to the offline engine's answer.
"""

from __future__ import annotations

import pytest

import mmjax
from mmjax.serving.chat import chat_prompt
from server_checks import assert_server_answers_as_offline
from tests.serving.serving_fixtures import data_url
from tiny_qwen import checkpoint, picture

PARAMS = mmjax.SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)


def _messages(image) -> list[dict]:
    return [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "What is it?"}]}]



@pytest.fixture(scope="module")
def llm():
    return mmjax.load(checkpoint(), limit_mm_per_prompt={"image": 2})


def test_the_chat_prompt_is_the_checkpoints_template_as_transformers_renders_it(llm):
    from transformers import AutoTokenizer

    image = picture(60, 90)
    prompt = chat_prompt(llm, _messages(image))
    tokenizer = AutoTokenizer.from_pretrained(checkpoint())
    want = tokenizer.apply_chat_template([{"role": "user", "content": [{"type": "image"},
                                                                        {"type": "text", "text": "What is it?"}]}],
                                         tokenize=False, add_generation_prompt=True)
    assert prompt["prompt"] == want
    assert "<|vision_start|><|image_pad|><|vision_end|>What is it?" in want
    assert prompt["multi_modal_data"]["image"] is image


def test_chat_equals_generate_on_the_rendered_prompt(llm):
    image = picture(80, 50, seed=3)
    chatted = mmjax.chat(llm, _messages(image), PARAMS, use_tqdm=False)[0]
    generated = mmjax.generate(llm, chat_prompt(llm, _messages(image)), PARAMS, use_tqdm=False)[0]
    assert chatted.token_ids == generated.token_ids and len(chatted.token_ids) == 6


def test_the_server_answers_streams_and_scores_a_chat_with_an_image(llm):
    image = picture(70, 110, seed=4)
    offline = mmjax.load(checkpoint(), limit_mm_per_prompt={"image": 2})  # the server's engine is its own
    messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(image)}},
                                                     {"type": "text", "text": "What is it?"}]}]
    assert_server_answers_as_offline(llm, offline, _messages(image), messages, "tiny-qwen")
