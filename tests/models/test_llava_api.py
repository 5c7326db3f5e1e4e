"""mmjax.load + llm.logits, end to end, against transformers' own processor and model.

The reference pipeline is all transformers: ``LlavaProcessor`` expands the
prompt and preprocesses the images, ``LlavaForConditionalGeneration`` (PyTorch)
computes the logits. Ours goes through the registry hooks and the Flax model.
"""

from __future__ import annotations

import io
import os
import shutil

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

import mmjax
from mmjax.registry import INPUT_REGISTRY, MULTIMODAL_REGISTRY, ModelConfig
from tiny_llava import checkpoint, reference_logits, relative_error

PROMPT = "USER: <image>\nWhat is shown here? <image>\nAnd here? ASSISTANT:"


@pytest.fixture(scope="module")
def ckpt() -> str:
    return checkpoint("gqa_default")


@pytest.fixture(scope="module")
def llm(ckpt):
    return mmjax.load(ckpt, limit_mm_per_prompt={"image": 2})


@pytest.fixture(scope="module")
def images():
    from skimage import data

    photo = Image.fromarray(data.astronaut())
    coffee = Image.fromarray(data.coffee()).convert("P")  # palette mode, 600x400
    return photo.crop((0, 0, 512, 200)).convert("RGBA"), coffee


def hf_processor(ckpt):
    from transformers import AutoImageProcessor, AutoTokenizer, LlavaProcessor

    return LlavaProcessor(
        image_processor=AutoImageProcessor.from_pretrained(ckpt, backend="pil"),
        tokenizer=AutoTokenizer.from_pretrained(ckpt), patch_size=6,
        vision_feature_select_strategy="default", image_token="<image>", num_additional_image_tokens=1,
    )


def test_logits_equal_transformers_pipeline(llm, ckpt, images):
    ref = hf_processor(ckpt)(images=list(images), text=PROMPT, return_tensors="np")
    token_ids, logits = llm.logits({"prompt": PROMPT, "multi_modal_data": {"image": list(images)}})
    np.testing.assert_array_equal(token_ids, ref["input_ids"][0])
    processed = llm.process({"prompt": PROMPT, "multi_modal_data": {"image": list(images)}})
    np.testing.assert_allclose(processed.mm_kwargs["pixel_values"], ref["pixel_values"], atol=1e-6)
    want = reference_logits("gqa_default", ref["input_ids"].astype(np.int32), ref["pixel_values"])[0]
    assert logits.shape == want.shape and logits.dtype == np.float32
    assert relative_error(logits, want) < 1e-4


def test_placeholder_layout(llm, images):
    processed = llm.process({"prompt": PROMPT, "multi_modal_data": {"image": list(images)}})
    (first, second) = processed.placeholders["image"]
    assert first.length == second.length == 25  # (30 / 6) ** 2 patches, CLS dropped
    image_id = llm.hf_config.image_token_id
    mask = processed.token_ids == image_id
    assert mask.sum() == 50
    assert mask[first.offset:first.offset + 25].all() and mask[second.offset:second.offset + 25].all()


def test_text_and_token_id_prompts_give_identical_logits(llm, images):
    ids = llm.tokenizer(PROMPT).input_ids
    data = {"image": list(images)}
    ids_a, logits_a = llm.logits({"prompt": PROMPT, "multi_modal_data": data})
    ids_b, logits_b = llm.logits({"prompt_token_ids": ids, "multi_modal_data": data})
    np.testing.assert_array_equal(ids_a, ids_b)
    np.testing.assert_array_equal(logits_a, logits_b)


def test_precomputed_image_embeds_give_the_same_logits(llm, images):
    pixels = llm.process({"prompt": "<image>", "multi_modal_data": {"image": images[0]}}).mm_kwargs["pixel_values"]
    embeds = np.asarray(llm.model.image_features(jnp.asarray(pixels))[0])  # [P, D]
    _, from_pixels = llm.logits({"prompt": "USER: <image>\nHi", "multi_modal_data": {"image": images[0]}})
    _, from_embeds = llm.logits({"prompt": "USER: <image>\nHi", "multi_modal_data": {"image": embeds}})
    np.testing.assert_allclose(from_embeds, from_pixels, atol=1e-5)


def test_text_only_prompt_equals_transformers(llm):
    ids, logits = llm.logits("What is shown in this image?")
    want = reference_logits("gqa_default", ids[None], None)[0]
    assert relative_error(logits, want) < 1e-4


def test_registry_answers_from_the_config(llm):
    config = llm.model_config
    assert MULTIMODAL_REGISTRY.get_max_multimodal_tokens(config) == 2 * 25
    dummy = INPUT_REGISTRY.dummy_data_for_profiling(config, seq_len=80)
    assert len(dummy.prompt_token_ids) == 80 and len(dummy.multi_modal_data["image"]) == 2


def test_full_size_llava_1_5_has_576_image_tokens():
    """CLIP ViT-L/14 at 336 px: (336 / 14) ** 2 = 576 patches, the CLS token dropped."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    hf = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                                       num_attention_heads=16, image_size=336, patch_size=14),
        text_config=LlamaConfig(vocab_size=32064), image_token_id=32000,
        architectures=["LlavaForConditionalGeneration"],
    )
    config = ModelConfig(hf_config=hf)
    assert MULTIMODAL_REGISTRY.get_max_multimodal_tokens(config) == 576
    dummy = INPUT_REGISTRY.dummy_data_for_profiling(config, seq_len=700)
    assert dummy.multi_modal_placeholders["image"][0].length == 576


def test_processor_config_json_layout_loads_the_same(ckpt, tmp_path, llm, images):
    """Current transformers writes processor_config.json instead of preprocessor_config.json."""
    target = tmp_path / "ckpt"
    shutil.copytree(ckpt, target)
    os.remove(target / "preprocessor_config.json")
    hf_processor(ckpt).save_pretrained(target)
    assert (target / "processor_config.json").exists()
    other = mmjax.load(target, limit_mm_per_prompt={"image": 2})
    prompt = {"prompt": PROMPT, "multi_modal_data": {"image": list(images)}}
    np.testing.assert_array_equal(other.logits(prompt)[1], llm.logits(prompt)[1])


def test_bfloat16_weights(ckpt, images):
    llm16 = mmjax.load(ckpt, dtype="bfloat16")
    assert llm16.dtype == jnp.bfloat16
    ids, logits = llm16.logits({"prompt": "USER: <image>\nHi", "multi_modal_data": {"image": images[1]}})
    ref = hf_processor(ckpt)(images=[images[1]], text="USER: <image>\nHi", return_tensors="np")
    want = reference_logits("gqa_default", ref["input_ids"].astype(np.int32), ref["pixel_values"])[0]
    assert logits.dtype == np.float32 and relative_error(logits, want) < 5e-2


# -- bad input ------------------------------------------------------------------


def test_more_markers_than_images(llm, images):
    with pytest.raises(ValueError, match=r"2 image placeholder token\(s\) \(id 383\) at prompt positions \[\d+, \d+\], "
                                         r"but 1 image\(s\) were given"):
        llm.logits({"prompt": PROMPT, "multi_modal_data": {"image": images[0]}})


def test_more_images_than_markers(llm, images):
    with pytest.raises(ValueError, match=r"1 image placeholder token\(s\) .* but 2 image\(s\) were given"):
        llm.logits({"prompt": "USER: <image>\nHi", "multi_modal_data": {"image": list(images)}})


def test_images_without_markers(llm, images):
    with pytest.raises(ValueError, match=r"has 0 image placeholder token\(s\) \(id 383\), but 1 image"):
        llm.logits({"prompt": "Hi", "multi_modal_data": {"image": images[0]}})


def test_corrupt_and_empty_images(llm, images):
    buffer = io.BytesIO()
    images[0].save(buffer, format="PNG")
    with pytest.raises(ValueError, match="image 0 could not be decoded"):
        truncated = Image.open(io.BytesIO(buffer.getvalue()[:500]))
        llm.logits({"prompt": "<image>", "multi_modal_data": {"image": truncated}})
    with pytest.raises(Exception, match="cannot identify image file"):
        Image.open(io.BytesIO(b"not an image at all"))  # PIL refuses before mmjax sees it
    with pytest.raises(ValueError, match=r"image 0 has zero size \(7x0\)"):
        llm.logits({"prompt": "<image>", "multi_modal_data": {"image": Image.new("RGB", (7, 0))}})
    with pytest.raises(TypeError, match="invalid image data of type bytes"):
        llm.logits({"prompt": "<image>", "multi_modal_data": {"image": buffer.getvalue()}})


def test_load_errors_name_what_is_missing(ckpt, tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json in checkpoint directory"):
        mmjax.load(tmp_path)
    broken = tmp_path / "no_tokenizer"
    shutil.copytree(ckpt, broken)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        os.remove(broken / name)
    with pytest.raises(FileNotFoundError, match="could not load a tokenizer from"):
        mmjax.load(broken)
    with pytest.raises(ValueError, match=r"dtype must be one of \['bfloat16', 'float16', 'float32'\], got 'int8'"):
        mmjax.load(ckpt, dtype="int8")


def test_load_refuses_another_architecture(tmp_path):
    from transformers import LlamaConfig

    LlamaConfig(architectures=["LlamaForCausalLM"]).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"no implementation of architectures \['LlamaForCausalLM'\]"):
        mmjax.load(tmp_path)


@pytest.mark.parametrize("mode, size", [("RGB", (50, 40)), ("RGBA", (17, 90)), ("L", (333, 201)), ("P", (64, 64))])
def test_pixels_equal_clip_image_processor(llm, ckpt, mode, size):
    from transformers import CLIPImageProcessor

    rng = np.random.default_rng(sum(size))
    image = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).convert(mode)
    ours = llm.process({"prompt": "<image>", "multi_modal_data": {"image": image}}).mm_kwargs["pixel_values"]
    theirs = CLIPImageProcessor.from_pretrained(ckpt)(image, return_tensors="np")["pixel_values"]
    assert ours.shape == (1, 3, 30, 30)
    np.testing.assert_allclose(ours, theirs, atol=1e-6)
