"""Qwen2.5-VL: logits equal transformers' and placeholder counts equal its image processor's.

Tiny random checkpoints written by transformers in the Qwen Hub layout, loaded by
``mmjax.load``; the reference is transformers' ``Qwen2_5_VLForConditionalGeneration``
on mmjax's token ids and its own image processor's pixels.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmjax.processing.qwen_vl_geometry import MAX_ASPECT_RATIO
from tiny_qwen import FACTOR, IMAGE, MAX_PIXELS, chat, loaded, picture, reference, reference_inputs, relative_error

PROMPTS = {
    "text only": chat("Tell me about the sea."),
    "one image": {"prompt": chat("What is this?", images=1), "multi_modal_data": {"image": picture(70, 130)}},
    "three images of different sizes": {
        "prompt": chat(f"Compare {IMAGE} with the others.", images=2),
        "multi_modal_data": {"image": [picture(150, 60, seed=1), picture(33, 45, seed=2), picture(200, 210, seed=3)]},
    },
}


# Every prompt on the Hub layout; the other checkpoints (transformers' save_pretrained layout, tied
# embeddings) differ in files and weights, not in the text path: their image prompts.
CASES = [("hub", case) for case in PROMPTS] + [(name, case) for name in ("save_pretrained", "tied")
                                                for case in ("one image", "three images of different sizes")]


@pytest.mark.parametrize("name, case", CASES)
def test_logits_equal_transformers(name, case):
    llm, prompt = loaded(name), PROMPTS[case]
    _, ours = llm.logits(prompt)
    model, _ = reference(name)
    with torch.no_grad():
        ref = model(**reference_inputs(llm, prompt, name)).logits[0].numpy()
    assert ours.shape == ref.shape
    assert relative_error(ours, ref) < 1e-5


SIZES = [(1, 1), (27, 29), (28, 28), (55, 57), (56, 56), (300, 400), (2000, 3000), (20, 3000), (3000, 16),
         (MAX_ASPECT_RATIO * 10, 10), (43, 83), (111, 113)]


@pytest.mark.parametrize("height, width", SIZES)
def test_placeholder_count_equals_the_image_processors(height, width):
    llm = loaded()
    _, processor = reference()
    image = picture(height, width)
    processed = llm.process({"prompt": IMAGE, "multi_modal_data": {"image": image}})
    want = int(processor(images=[image], return_tensors="np")["image_grid_thw"][0].prod()) // 4
    assert [r.length for r in processed.placeholders["image"]] == [want]
    assert int((processed.token_ids == reference()[0].config.image_token_id).sum()) == want


@pytest.mark.parametrize("budget", [{"max_pixels": 8 * FACTOR * FACTOR}, {"min_pixels": 40 * FACTOR * FACTOR},
                                    {"min_pixels": 2 * FACTOR * FACTOR, "max_pixels": 30 * FACTOR * FACTOR}])
def test_a_request_budget_gives_the_processors_count_for_that_budget(budget):
    llm = loaded()
    from transformers import AutoImageProcessor

    from tiny_qwen import checkpoint

    processor = AutoImageProcessor.from_pretrained(checkpoint(), **budget)
    for image in (picture(100, 170), picture(30, 30), picture(400, 90)):
        processed = llm.process({"prompt": IMAGE, "multi_modal_data": {"image": image},
                                 "mm_processor_kwargs": budget})
        want = int(processor(images=[image], return_tensors="np")["image_grid_thw"][0].prod()) // 4
        assert processed.placeholders["image"][0].length == want


def test_a_request_may_not_raise_the_pixel_budget():
    with pytest.raises(ValueError, match=rf"max_pixels={2 * MAX_PIXELS} is above the model's pixel budget"):
        loaded().process({"prompt": IMAGE, "multi_modal_data": {"image": picture(40, 40)},
                          "mm_processor_kwargs": {"max_pixels": 2 * MAX_PIXELS}})


def test_images_and_markers_must_agree():
    with pytest.raises(ValueError, match=r"1 image placeholder token.*but 2 image\(s\) were given"):
        loaded().process({"prompt": IMAGE, "multi_modal_data": {"image": [picture(40, 40), picture(50, 50)]}})


def test_positions_after_images_follow_transformers_get_rope_index():
    llm = loaded()
    prompt = PROMPTS["three images of different sizes"]
    processed = llm.process(prompt)
    model, _ = reference()
    inputs = reference_inputs(llm, prompt)
    want, delta = model.model.get_rope_index(inputs["input_ids"], inputs["mm_token_type_ids"],
                                             image_grid_thw=inputs["image_grid_thw"])
    np.testing.assert_array_equal(processed.rope_positions, want[:, 0].numpy())
    assert processed.rope_delta == int(delta[0, 0])
