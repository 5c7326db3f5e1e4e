"""process_prompt: one path from a user prompt to token ids, placeholders and mm kwargs."""

import dataclasses

import numpy as np
import pytest

from mmjax.registry import PlaceholderRange, process_prompt
from mmjax.testing.tokenizer import make_tiny_tokenizer

PROMPT = "USER: <image>\nWhat is shown in this image? ASSISTANT:"


@pytest.fixture(scope="module")
def tokenizer():
    return make_tiny_tokenizer(384)


def test_text_and_token_id_prompts_give_identical_inputs(model_config, photo, tokenizer):
    ids = tokenizer(PROMPT).input_ids
    from_text = process_prompt(model_config, {"prompt": PROMPT, "multi_modal_data": {"image": photo}})
    from_ids = process_prompt(model_config, {"prompt_token_ids": ids, "multi_modal_data": {"image": photo}})
    np.testing.assert_array_equal(from_text.token_ids, from_ids.token_ids)
    assert from_text.placeholders == from_ids.placeholders
    np.testing.assert_array_equal(from_text.mm_kwargs["pixel_values"], from_ids.mm_kwargs["pixel_values"])


def test_placeholders_sit_where_the_image_marker_was(model_config, photo, tokenizer):
    ids = tokenizer(PROMPT).input_ids
    marker = ids.index(383)
    out = process_prompt(model_config, {"prompt": PROMPT, "multi_modal_data": {"image": photo}})
    assert out.token_ids.dtype == np.int32 and len(out.token_ids) == len(ids) - 1 + 25
    assert out.placeholders == {"image": (PlaceholderRange(marker, 25),)}
    assert (out.token_ids[marker:marker + 25] == 383).all()
    np.testing.assert_array_equal(out.token_ids[:marker], ids[:marker])
    np.testing.assert_array_equal(out.token_ids[marker + 25:], ids[marker + 1:])
    assert out.num_mm_tokens == 25 and out.prompt == PROMPT


def test_a_plain_string_prompt_without_images(model_config, tokenizer):
    out = process_prompt(model_config, "What is this?")
    np.testing.assert_array_equal(out.token_ids, tokenizer("What is this?").input_ids)
    assert dict(out.mm_kwargs) == {} and dict(out.placeholders) == {}


def test_marker_count_mismatch_is_a_clear_error(model_config, photo):
    with pytest.raises(ValueError, match=r"2 <image> markers but 1 images"):
        process_prompt(model_config, {"prompt": "<image><image> hi", "multi_modal_data": {"image": photo}})


def test_prompt_longer_than_the_context(model_config, photo):
    config = dataclasses.replace(model_config, max_model_len=30)
    with pytest.raises(ValueError, match=r"ToyVLM .*the prompt has \d+ tokens after placeholder expansion "
                                         r"\(25 of them multimodal placeholders\), more than the context length 30"):
        process_prompt(config, {"prompt": PROMPT, "multi_modal_data": {"image": photo}})


def test_too_many_images_before_any_work(model_config, photo):
    with pytest.raises(ValueError, match=r"at most 1 image item\(s\), but 2 were given"):
        process_prompt(model_config, {"prompt": "<image><image>", "multi_modal_data": {"image": [photo, photo]}})


@pytest.mark.parametrize("prompt, error, message", [
    (42, TypeError, "a prompt must be a str"),
    ({"text": "hi"}, ValueError, r"unknown prompt keys \['text'\]"),
    ({"prompt": "hi", "prompt_token_ids": [1]}, ValueError, "exactly one of 'prompt'"),
    ({"multi_modal_data": {}}, ValueError, "exactly one of 'prompt'"),
    ({"prompt": b"hi"}, TypeError, "'prompt' must be a str"),
    ({"prompt_token_ids": "1 2 3"}, TypeError, "prompt_token_ids must be a list of ints"),
    ({"prompt_token_ids": [1, 2.0]}, TypeError, r"prompt_token_ids\[1\] must be an int token id"),
    ({"prompt_token_ids": [1, True]}, TypeError, r"prompt_token_ids\[1\] must be an int token id"),
    ({"prompt_token_ids": [1, 384]}, ValueError,
     r"token id 384 at prompt position 1 is outside the vocabulary \[0, 384\)"),
    ({"prompt_token_ids": [-1]}, ValueError, "token id -1 at prompt position 0"),
    ({"prompt_token_ids": []}, ValueError, "the prompt is empty"),
    ({"prompt": "hi", "multi_modal_data": [1]}, TypeError, "'multi_modal_data' must be a dict"),
    ({"prompt": "hi", "mm_processor_kwargs": 3}, TypeError, "'mm_processor_kwargs' must be a dict"),
])
def test_malformed_prompts(model_config, prompt, error, message):
    with pytest.raises(error, match=message):
        process_prompt(model_config, prompt)


def test_token_ids_as_a_numpy_array(model_config, tokenizer):
    ids = tokenizer("What is this?").input_ids
    out = process_prompt(model_config, {"prompt_token_ids": np.array(ids, np.int64)})
    np.testing.assert_array_equal(out.token_ids, ids)


def test_a_bad_image_fails_only_its_own_prompt(model_config, photo):
    """Processing is per prompt and pure: a failure leaves nothing behind for the next one."""
    with pytest.raises(TypeError):
        process_prompt(model_config, {"prompt": "<image>", "multi_modal_data": {"image": "not an image"}})
    ok = process_prompt(model_config, {"prompt": "<image>", "multi_modal_data": {"image": photo}})
    assert ok.mm_kwargs["pixel_values"].shape == (1, 3, 30, 30)
