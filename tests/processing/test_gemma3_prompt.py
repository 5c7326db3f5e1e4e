"""Gemma 3's input processor and mapper equal transformers' ``Gemma3Processor``: ids, spans, pixels, errors.

The hooks (``mmjax.models.gemma3.hooks``) are registered on a stand-in model class with the registry's
decorators, as the model class registers them, and every prompt goes through ``process_prompt``, as a
user's does: its ids must equal the processor's ``input_ids`` of the same text (as text and as ids), its
soft-token spans the processor's ``token_type_ids`` groups, each image's placeholder range run from its
first ``<start_of_image>`` to its last ``<end_of_image>``.
"""

from __future__ import annotations

import numpy as np
import pytest

from mmjax.models.gemma3 import hooks
from mmjax.processing.gemma3_prompt import bidirectional_spans
from mmjax.registry import (
    INPUT_REGISTRY, MULTIMODAL_REGISTRY, InputContext, ModelConfig, SupportsMultiModal, process_prompt,
)  # fmt: skip
from mmjax.registry.config import load_hf_config
from tests.models.tiny_gemma3 import chat, checkpoint, hf_processor, picture


@MULTIMODAL_REGISTRY.register_image_input_mapper(hooks.map_images)
@MULTIMODAL_REGISTRY.register_max_image_tokens(hooks.max_image_tokens)
@INPUT_REGISTRY.register_dummy_data(hooks.dummy_data)
@INPUT_REGISTRY.register_input_processor(hooks.input_processor)
class Gemma3StandIn(SupportsMultiModal):
    """The hooks on a class of their own (the model is the lead's)."""


SMALL_CROPS = {"do_pan_and_scan": True, "pan_and_scan_min_crop_size": 16, "pan_and_scan_max_num_crops": 3,
               "pan_and_scan_min_ratio_to_activate": 1.2}
WIDE, SQUARE, TALL = picture(30, 100, seed=1), picture(40, 40, seed=2), picture(90, 40, seed=3)
PROMPTS = {
    "chat": (chat("Describe this image.", 1), [WIDE]),
    "image-first": ("<start_of_image>What is this?", [WIDE]),
    "two-in-a-row": (chat("Compare them.", 2), [WIDE, TALL]),
    "text-right-after": ("Look at this<start_of_image>picture and that<start_of_image>one", [SQUARE, WIDE]),
    "newlines-around": ("Look:\n<start_of_image>\n\n\nnow answer", [TALL]),
    "space-before": ("Compare <start_of_image> and <start_of_image>.", [TALL, SQUARE]),
    "system-turn": (hf_processor().apply_chat_template(
        [{"role": "system", "content": "Be brief."},
         {"role": "user", "content": [{"type": "text", "text": "First:"}, {"type": "image"},
                                      {"type": "text", "text": "second:"}, {"type": "image"}]}],
        add_generation_prompt=True), [SQUARE, WIDE]),
}


def model_config(name: str = "hub", images: int = 2, **mm_processor_kwargs) -> ModelConfig:
    path = checkpoint(name)
    return ModelConfig(hf_config=load_hf_config(path), model=path, model_cls=Gemma3StandIn,
                       limit_mm_per_prompt={"image": images}, mm_processor_kwargs=mm_processor_kwargs)


def reference(text: str, images, **kwargs) -> dict:
    return hf_processor()(text=text, images=images, return_tensors="np", **kwargs)


@pytest.mark.parametrize("pan_and_scan", [False, True], ids=["whole", "pan-and-scan"])
@pytest.mark.parametrize("name", sorted(PROMPTS))
def test_ids_spans_and_pixels_equal_the_processors(name, pan_and_scan):
    text, images = PROMPTS[name]
    kwargs = SMALL_CROPS if pan_and_scan else {}
    config = model_config(**kwargs)
    expected = reference(text, images, **kwargs)
    ids = expected["input_ids"][0].tolist()
    tokenizer = hf_processor().tokenizer
    for prompt in ({"prompt": text, "multi_modal_data": {"image": images}},
                   {"prompt_token_ids": tokenizer(text).input_ids, "multi_modal_data": {"image": images}}):
        processed = process_prompt(config, prompt)
        assert processed.token_ids.tolist() == ids
        assert bidirectional_spans(processed.token_ids, tokenizer.image_token_id) == \
            bidirectional_spans(expected["token_type_ids"][0], 1)
    boi, eoi = tokenizer.boi_token_id, tokenizer.convert_tokens_to_ids("<end_of_image>")
    ranges = processed.placeholders["image"]
    mapped = processed.mm_items["image"]
    assert len(ranges) == len(images) == len(mapped)
    for (offset, length), item in zip(ranges, mapped):
        run = ids[offset:offset + length]
        assert run[0] == boi and run[-1] == eoi
        np.testing.assert_array_equal(item["range_token_ids"], run)
        np.testing.assert_array_equal(item["soft_token_mask"], np.asarray(run) == tokenizer.image_token_id)
        crops = int(item["num_crops"][0])
        assert item["pixel_values"].shape == (1 + crops, 3, 32, 32) and run.count(boi) == 1 + crops
    outside = np.ones(len(ids), bool)
    for offset, length in ranges:
        outside[offset:offset + length] = False
    assert not np.isin(np.asarray(ids)[outside], [boi, eoi, tokenizer.image_token_id]).any()
    np.testing.assert_array_equal(processed.mm_kwargs["pixel_values"], expected["pixel_values"])
    if pan_and_scan:
        assert any(int(item["num_crops"][0]) > 0 for item in mapped)


def test_newlines_merge_with_the_prompts():
    tokenizer = hf_processor().tokenizer
    processed = process_prompt(model_config(), {"prompt": chat("Hi", 1), "multi_modal_data": {"image": SQUARE}})
    offset = processed.placeholders["image"][0].offset
    assert tokenizer.convert_ids_to_tokens(processed.token_ids[offset - 1:offset + 1].tolist()) == \
        ["\n\n\n", "<start_of_image>"]  # "user\n" + "\n\n": one token, as Gemma's tokenizer makes it


def test_request_kwargs_turn_pan_and_scan_off_or_lower_it():
    config = model_config(**SMALL_CROPS)
    prompt = {"prompt": "<start_of_image>", "multi_modal_data": {"image": picture(20, 200)}}
    assert process_prompt(config, prompt).mm_items["image"][0]["num_crops"].tolist() == [3]
    lowered = process_prompt(config, {**prompt, "mm_processor_kwargs": {"pan_and_scan_max_num_crops": 2}})
    assert lowered.mm_items["image"][0]["num_crops"].tolist() == [2]
    expected = reference("<start_of_image>", [picture(20, 200)], **{**SMALL_CROPS, "pan_and_scan_max_num_crops": 2})
    assert lowered.token_ids.tolist() == expected["input_ids"][0].tolist()
    off = process_prompt(config, {**prompt, "mm_processor_kwargs": {"do_pan_and_scan": False}})
    assert off.mm_items["image"][0]["num_crops"].tolist() == [0]


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"do_pan_and_scan": True}, "do_pan_and_scan=True, but pan and scan is off for this model"),
    ({"pan_and_scan_max_num_crops": 0}, "mm_processor_kwargs pan_and_scan_max_num_crops must be an int >= 1, got 0"),
    ({"pan_and_scan_min_ratio_to_activate": -1}, "pan_and_scan_min_ratio_to_activate must be a finite number > 0"),
])
def test_bad_request_kwargs_are_refused(kwargs, message):
    prompt = {"prompt": "<start_of_image>", "multi_modal_data": {"image": WIDE}, "mm_processor_kwargs": kwargs}
    with pytest.raises(ValueError, match=message):
        process_prompt(model_config(), prompt)


def test_a_request_may_not_raise_the_crop_limit():
    prompt = {"prompt": "<start_of_image>", "multi_modal_data": {"image": WIDE},
              "mm_processor_kwargs": {"pan_and_scan_max_num_crops": 4}}
    with pytest.raises(ValueError, match=r"pan_and_scan_max_num_crops=4 is above the model's 3; a request may only"):
        process_prompt(model_config(**SMALL_CROPS), prompt)


def test_model_wide_kwargs_are_checked():
    with pytest.raises(ValueError, match="model-wide mm_processor_kwargs pan_and_scan_min_crop_size must be an int"):
        process_prompt(model_config(pan_and_scan_min_crop_size="16"),
                       {"prompt": "<start_of_image>", "multi_modal_data": {"image": WIDE}})


@pytest.mark.parametrize(("text", "images", "message"), [
    ("<start_of_image><start_of_image>", [WIDE], r"2 <start_of_image> marker\(s\) .* at prompt positions \[1, 2\], "
                                                 r"but 1 image\(s\) were given"),
    ("no marker", [WIDE], r"0 <start_of_image> marker\(s\) .*, but 1 image\(s\) were given"),
    ("<start_of_image>", None, r"1 <start_of_image> marker\(s\) .* at prompt positions \[1\], but no images"),
    ("<start_of_image><image_soft_token>", [WIDE], r"holds <image_soft_token> \(id \d+\) at positions \[2\]"),
])
def test_markers_and_images_must_agree(text, images, message):
    prompt = {"prompt": text} | ({"multi_modal_data": {"image": images}} if images else {})
    with pytest.raises(ValueError, match=message):
        process_prompt(model_config(), prompt)


def test_max_tokens_and_dummy_data_hold_the_worst_case():
    for kwargs, crops in (({}, 0), (SMALL_CROPS, 3)):
        config = model_config(**kwargs)
        most = MULTIMODAL_REGISTRY.get_max_tokens_per_item_by_modality(config)["image"]
        dummy = INPUT_REGISTRY.dummy_data_for_profiling(config, seq_len=600)  # validated by the registry
        assert len(dummy.multi_modal_data["image"]) == 2 and len(dummy.prompt_token_ids) == 600
        image = dummy.multi_modal_data["image"][0]
        processed = process_prompt(config, {"prompt": "<start_of_image>", "multi_modal_data": {"image": image}})
        assert processed.mm_items["image"][0]["num_crops"].tolist() == [crops]
        assert processed.placeholders["image"][0].length == most
        (offset, length), = processed.placeholders["image"]
        assert list(dummy.prompt_token_ids[:length]) == processed.token_ids[offset:offset + length].tolist()
    assert MULTIMODAL_REGISTRY.get_max_tokens_per_item_by_modality(model_config())["image"] == 16 + 2


def test_encoder_input_variants_cover_every_crop_count():
    variants = hooks.encoder_input_variants(InputContext(model_config(**SMALL_CROPS)))
    shapes = [v["pixel_values"].shape[0] for v in variants]
    assert shapes == [1, 3, 4]  # no crops, 2 or 3 crops
    assert [v["pixel_values"].shape[0] for v in hooks.encoder_input_variants(InputContext(model_config()))] == [1]


def test_bidirectional_spans():
    assert bidirectional_spans([5, 9, 9, 5, 9, 5, 5, 9], 9) == [(1, 3), (4, 5), (7, 8)]
    assert bidirectional_spans(np.zeros((0,), np.int32), 9) == []
    ids = reference(chat("x", 2), [WIDE, SQUARE], **SMALL_CROPS)["input_ids"][0]
    spans = hooks.prompt_bidirectional_spans(InputContext(model_config()), ids)
    assert len(spans) == 1 + 3 + 1 and all(stop - start == 16 for start, stop in spans)


def test_hand_made_ids_that_do_not_round_trip_are_kept():
    tokenizer = hf_processor().tokenizer
    letters = tokenizer.convert_tokens_to_ids(list("user"))  # "user" as letters: not what the tokenizer makes
    assert tokenizer.encode("user", add_special_tokens=False) != letters
    ids = [tokenizer.bos_token_id, *letters, tokenizer.boi_token_id]
    processed = process_prompt(model_config(), {"prompt_token_ids": ids, "multi_modal_data": {"image": SQUARE}})
    newlines = tokenizer.encode("\n\n", add_special_tokens=False)
    offset = processed.placeholders["image"][0].offset
    assert processed.token_ids[:offset].tolist() == [tokenizer.bos_token_id, *letters, *newlines]
