"""``mmjax.chat`` and chat templates, against transformers' own ``processor.apply_chat_template``."""

from __future__ import annotations

import json
import os
import shutil

import pytest

import mmjax
from mmjax.serving.chat import chat_prompt
from mmjax.serving.chat_template import content_format, find_chat_template, render_chat
from tests.engine.engine_fixtures import LLAVA, NEXT, checkpoint, hf_greedy, hf_inputs, load
from tests.serving.serving_fixtures import image

GREEDY = mmjax.SamplingParams(temperature=0.0, max_tokens=6)


def _conversation(*images, string_content: bool = True):
    """Two user turns with an image each; system and assistant text as plain strings (which mmjax
    turns into text parts for a parts template, as vLLM does) or as the parts themselves."""
    text = (lambda t: t) if string_content else (lambda t: [{"type": "text", "text": t}])
    return [
        {"role": "system", "content": text("Answer briefly.")},
        {"role": "user", "content": [*({"type": "image", "image": im} for im in images[:1]),
                                     {"type": "text", "text": "What is shown?"}]},
        {"role": "assistant", "content": text("A cat.")},
        {"role": "user", "content": [*({"type": "image", "image": im} for im in images[1:]),
                                     {"type": "text", "text": "And now?"}]},
    ]


def _hf_processor(kind):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(checkpoint(kind))


@pytest.mark.parametrize("kind", [LLAVA, NEXT])
def test_prompt_text_and_ids_equal_transformers_apply_chat_template(kind):
    llm = load(kind)
    parts = _conversation(image(1), image(2), string_content=False)
    hf_text = _hf_processor(kind).apply_chat_template(parts, add_generation_prompt=True, tokenize=False)
    assert "Answer briefly." in hf_text or kind == NEXT  # (NeXT's template reads system text as a part too)
    prompt = chat_prompt(llm, _conversation(image(1), image(2)))
    assert prompt["prompt"] == hf_text
    assert len(prompt["multi_modal_data"]["image"]) == 2
    hf_ids = hf_inputs(kind, llm, {"prompt": hf_text, "multi_modal_data": {"image": [image(1), image(2)]}})
    assert list(llm.process(prompt).token_ids) == hf_ids["input_ids"][0].tolist()  # placeholders expanded


def test_chat_equals_transformers_greedy_on_the_same_conversation():
    llm = load(LLAVA)
    conversation = [{"role": "user", "content": [{"type": "image", "image": image(3)},
                                                 {"type": "text", "text": "Describe the picture."}]}]
    hf_text = _hf_processor(LLAVA).apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
    want = hf_greedy(LLAVA, llm, {"prompt": hf_text, "multi_modal_data": {"image": image(3)}}, GREEDY.max_tokens)
    [got] = mmjax.chat(llm, conversation, GREEDY)
    assert list(got.token_ids) == want
    [offline] = mmjax.generate(llm, {"prompt": hf_text, "multi_modal_data": {"image": image(3)}}, GREEDY)
    assert got.text == offline.text


def test_a_list_of_conversations_gives_one_output_each_in_order():
    llm = load(LLAVA)
    conversations = [[{"role": "user", "content": [{"type": "image", "image": image(s)},
                                                   {"type": "text", "text": "What is shown?"}]}] for s in (4, 5)]
    outputs = mmjax.chat(llm, conversations, GREEDY)
    for conversation, output in zip(conversations, outputs):
        assert output.token_ids == mmjax.chat(llm, conversation, GREEDY)[0].token_ids


def test_a_generator_of_conversations_is_read_lazily_and_gives_the_same_outputs():
    llm = load(LLAVA)
    config = mmjax.EngineConfig(max_num_seqs=2, max_model_len=256)
    conversations = [[{"role": "user", "content": [{"type": "image", "image": image(s)},
                                                   {"type": "text", "text": f"What is shown in {s}?"}]}]
                     for s in range(6)]
    read = []

    def data_set():
        for i, conversation in enumerate(conversations):
            read.append(i)
            yield conversation

    results = mmjax.chat(llm, data_set(), GREEDY, engine_config=config, as_completed=True)
    first_index, first = next(results)
    assert len(read) <= 2 * config.max_num_seqs < len(conversations)  # read only as the engine has room
    got = dict([(first_index, first), *results])
    assert sorted(got) == list(range(len(conversations)))
    for i, conversation in enumerate(conversations):
        assert got[i].token_ids == mmjax.chat(llm, conversation, GREEDY, engine_config=config)[0].token_ids
    with pytest.raises(TypeError, match="messages must be a conversation .* or an iterable of them, got 'hi'"):
        mmjax.chat(llm, "hi")


def test_bos_in_the_template_is_not_doubled():
    llm = load(LLAVA)
    template = "{{ bos_token }}{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    prompt = chat_prompt(llm, [{"role": "user", "content": "hello"}], chat_template=template)
    bos = llm.tokenizer.bos_token_id
    assert prompt["prompt_token_ids"][0] == bos and prompt["prompt_token_ids"][1] != bos
    assert prompt["prompt_token_ids"] == llm.tokenizer("user: hello\n").input_ids  # what BOS + text makes


def test_a_string_template_gets_the_placeholder_text_per_image():
    llm = load(LLAVA)
    template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    assert content_format(template, llm.tokenizer) == "string"
    conversation = [{"role": "user", "content": [{"type": "image", "image": image(6)},
                                                 {"type": "text", "text": "Hi"}]}]
    assert chat_prompt(llm, conversation, chat_template=template)["prompt"] == "user: <image>\nHi\n"
    llava = find_chat_template(checkpoint(LLAVA), llm.tokenizer)
    assert content_format(llava, llm.tokenizer) == "openai"
    assert render_chat(llm.tokenizer, llava, [{"role": "user", "content": [{"type": "text", "text": "x"}]}],
                       placeholder="<image>") == "USER: x ASSISTANT:"


def test_template_lookup_order_and_a_clear_error_without_one(tmp_path):
    llm = load(LLAVA)
    src = checkpoint(LLAVA)
    bare = tmp_path / "bare"
    shutil.copytree(src, bare)
    os.remove(bare / "chat_template.jinja")

    class NoTemplate:
        chat_template = None

    with pytest.raises(ValueError, match=r"no chat template; looked in .*chat_template\.jinja.*chat_template\.json"):
        find_chat_template(bare, NoTemplate())
    (bare / "chat_template.json").write_text(json.dumps({"chat_template": "{{ 'from json' }}"}))
    assert find_chat_template(bare, llm.tokenizer) == "{{ 'from json' }}"
    (bare / "chat_template.jinja").write_text("{{ 'from jinja' }}")
    assert find_chat_template(bare, llm.tokenizer) == "{{ 'from jinja' }}"
    os.remove(bare / "chat_template.jinja")
    os.remove(bare / "chat_template.json")
    assert find_chat_template(bare, llm.tokenizer) == llm.tokenizer.chat_template  # the tokenizer's, last


@pytest.mark.parametrize("messages, match", [
    ([{"role": "robot", "content": "hi"}], r"message 0 has role 'robot'"),
    ([{"role": "user", "content": [{"type": "audio_url", "audio_url": {}}]}],
     r"message 0, part 0 has type 'audio_url'; expected 'text', 'image_url' or 'video_url'"),
    ([{"role": "user", "content": [{"type": "video_url", "video_url": {}}]}],
     r"message 0, part 0: a video_url part needs video_url.url"),
    ([{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "video_url", "video_url": {
        "url": "http://127.0.0.1:9/never-fetched.mp4"}}]}],  # LLaVA takes no video: refused before any fetch
     r"message 0, part 1: this model takes no video input \(no video input mapper is registered for "
     r"LlavaForConditionalGeneration\)"),
    ([{"role": "user", "content": [{"type": "text"}]}], r"message 0, part 0: a text part needs 'text'"),
    ([{"role": "user", "content": "a"}, {"role": "assistant", "content": [{"type": "image", "image": None}]}],
     r"message 1, part 0: images may only be sent in user messages"),
    ([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "ftp://x/y.png"}}]}],
     r"message 0, part 0: unsupported image URL"),
    ([], r"messages must be a non-empty list"),
])
def test_bad_messages_are_refused_by_name(messages, match):
    llm = load(LLAVA)
    with pytest.raises(ValueError, match=match):
        chat_prompt(llm, messages)


def test_too_many_images_are_refused_before_loading_them():
    llm = load(LLAVA)  # at most 2 images per prompt
    parts = [{"type": "image_url", "image_url": {"url": "http://127.0.0.1:9/never-fetched.png"}}] * 3
    with pytest.raises(ValueError, match=r"3 images; this model takes at most 2"):
        chat_prompt(llm, [{"role": "user", "content": parts}])


def test_errors_return_gives_the_bad_conversation_an_error_output_and_runs_the_rest():
    llm = load(LLAVA)
    good = [{"role": "user", "content": "Hello"}]
    outputs = mmjax.chat(llm, [good, [{"role": "robot", "content": "x"}], good], GREEDY, errors="return")
    assert [o.finish_reason for o in outputs] == ["length", "error", "length"]
    assert "role 'robot'" in outputs[1].error and outputs[0].token_ids == outputs[2].token_ids
    with pytest.raises(mmjax.PromptError, match=r"prompt 1: ValueError: message 0 has role 'robot'"):
        mmjax.chat(llm, [good, [{"role": "robot", "content": "x"}]], GREEDY)
