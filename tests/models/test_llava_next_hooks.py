"""LLaVA-NeXT's registry hooks, end to end against transformers' LlavaNextProcessor and model.

The prompt goes through ``process_prompt`` (our input processor and image
mapper); the reference is transformers' processor (which expands ``<image>``
by its own count) and PyTorch model.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mmjax.models.llava_next import LlavaNextForConditionalGeneration, forward
from mmjax.processing.anyres_layout import AnyresImages
from mmjax.registry import INPUT_REGISTRY, MULTIMODAL_REGISTRY, ModelConfig, process_prompt
from tiny_llava_next import checkpoint, hf_processor, images, loaded, reference_logits, relative_error

NAME = "vicuna"
PROMPT = "USER: <image>\nWhat is shown here? <image>\nAnd here? ASSISTANT:"


def model_config(**overrides) -> ModelConfig:
    overrides.setdefault("limit_mm_per_prompt", {"image": 2})
    return ModelConfig.from_pretrained(checkpoint(NAME), model_cls=LlavaNextForConditionalGeneration, **overrides)


@pytest.mark.parametrize("sizes", [[(17, 45), (60, 31)], [(91, 12), (1, 97)]])
def test_prompt_and_logits_match_transformers_pipeline(sizes):
    pictures = images(sizes, seed=3)
    processed = process_prompt(model_config(), {"prompt": PROMPT, "multi_modal_data": {"image": pictures}})
    reference = hf_processor(NAME)(text=PROMPT, images=pictures, return_tensors="np")
    np.testing.assert_array_equal(processed.token_ids, reference["input_ids"][0])
    geometry = loaded(NAME)[0].config.geometry
    assert [r.length for r in processed.placeholders["image"]] == [geometry.num_image_tokens(h, w) for h, w in sizes]

    model, _ = loaded(NAME)
    ids = jnp.asarray(processed.token_ids)[None]
    packed = AnyresImages(**{k: jnp.asarray(v) for k, v in processed.mm_kwargs.items()})
    got = np.asarray(forward(*nnx.split(model), ids, jnp.arange(ids.shape[1])[None], packed))
    want = reference_logits(NAME, reference["input_ids"], reference["pixel_values"], reference["image_sizes"])
    error = relative_error(got, want)
    print(f"pipeline {sizes}: max|diff|/max|logits| = {error:.2e}")
    assert error <= 1e-4


def test_max_tokens_and_dummy_data_follow_the_geometry():
    config = model_config()
    geometry = loaded(NAME)[0].config.geometry
    assert MULTIMODAL_REGISTRY.get_max_multimodal_tokens(config) == 2 * geometry.max_image_tokens() == 2 * 135
    dummy = INPUT_REGISTRY.dummy_data_for_profiling(config, seq_len=400)
    pictures = dummy.multi_modal_data["image"]
    assert len(pictures) == 2 and len(dummy.prompt_token_ids) == 400
    processor = hf_processor(NAME)
    for picture, placeholder in zip(pictures, dummy.multi_modal_placeholders["image"]):
        theirs = processor._get_number_of_features(picture.height, picture.width, 30, 30) - 1
        assert placeholder.length == theirs == geometry.max_image_tokens()


def test_image_too_large_for_the_context_names_the_numbers():
    pictures = images([(100, 100)])  # 135 tokens
    prompt = {"prompt": "USER: <image>\nWhat is it? ASSISTANT:", "multi_modal_data": {"image": pictures}}
    with pytest.raises(ValueError, match=r"need 135 placeholder tokens .* but only \d+ are available"):
        process_prompt(model_config(max_model_len=100), prompt)


def test_mapper_output_is_bucketed():
    pictures = images([(17, 45), (100, 100)])  # 3 + 5 tiles
    mm = MULTIMODAL_REGISTRY.map_input(model_config(), {"image": pictures})
    assert mm["pixel_values"].shape == (8, 3, 30, 30) and mm["tile_valid"].sum() == 8
    assert mm["placeholder_rows"].shape == (8 * (25 + 5),)
