"""Qwen3-VL through ``mmjax.load`` and ``llm.logits`` equals transformers' ``Qwen3VLForConditionalGeneration``.

Tiny random checkpoints written by transformers itself (``make_tiny_qwen3_vl_checkpoint``):
untied embeddings in the Hub layout, tied ones in the ``save_pretrained`` layout. The
reference runs on mmjax's processed token ids with transformers' own image processor
(``AutoImageProcessor``) and ``mm_token_type_ids`` (1 at the image placeholders), from
which transformers computes its M-RoPE positions. Float32 logits must agree to
``TOLERANCE`` of their largest magnitude (measured: about 1e-6).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from PIL import Image
from transformers import AutoConfig, AutoImageProcessor, Qwen3VLForConditionalGeneration

import mmjax
from mmjax.models.common.deepstack import DeepStack
from mmjax.models.common.family import param_paths
from mmjax.models.qwen3_vl import QWEN3_VL, Qwen3VLConfig
from mmjax.models.qwen3_vl.embedding_rows import merge_rows
from mmjax.sharding.specs import spec_for
from mmjax.testing.qwen_checkpoints import make_tiny_qwen3_vl_checkpoint
from mmjax.testing.qwen_specs import TinyQwen3VLSpec

TOLERANCE = 1e-5
#: ``largest_image_size`` bounds an image's tokens only when max_pixels >= 200 * factor**2 (factor 32).
BUDGET = {"max_pixels": 200 * 32 * 32}
SPEC = TinyQwen3VLSpec(**BUDGET)
IMAGE_PAD = SPEC.token_ids.image_pad
CHECKPOINTS = {
    "hub-untied": {"layout": "hub", "tie_word_embeddings": False},
    "save_pretrained-tied": {"layout": "save_pretrained", "tie_word_embeddings": True},
}


def prompt(num_images: int, text: str = "What is shown?") -> str:
    """A user turn in the Instruct chat template's form: one vision block per image, then ``text``."""
    vision = "<|vision_start|><|image_pad|><|vision_end|>" * num_images
    return f"<|im_start|>user\n{vision}{text}<|im_end|>\n<|im_start|>assistant\n"


def image(height: int, width: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """``models(name) -> (llm, transformers model, transformers image processor)``, each built once."""

    @functools.cache
    def build(name: str):
        path = make_tiny_qwen3_vl_checkpoint(tmp_path_factory.mktemp(name), **CHECKPOINTS[name], **BUDGET)
        llm = mmjax.load(path, limit_mm_per_prompt={"image": 3})
        hf = Qwen3VLForConditionalGeneration.from_pretrained(path).eval()
        return llm, hf, AutoImageProcessor.from_pretrained(path)

    return build


def reference_logits(hf, processor, token_ids, images=(), **size) -> np.ndarray:
    """transformers' logits on mmjax's token ids, its image processor's pixels (``size``: a budget override)."""
    input_ids = torch.tensor([list(token_ids)], dtype=torch.long)
    kwargs = {}
    if images:
        pixels = processor(images=list(images), return_tensors="pt", **size)
        kwargs = dict(pixel_values=pixels["pixel_values"], image_grid_thw=pixels["image_grid_thw"],
                      mm_token_type_ids=(input_ids == IMAGE_PAD).int())
    with torch.no_grad():
        return hf(input_ids=input_ids, **kwargs).logits[0].numpy()


def relative_error(ours: np.ndarray, theirs: np.ndarray) -> float:
    assert ours.shape == theirs.shape, (ours.shape, theirs.shape)
    return float(np.abs(ours - theirs).max() / np.abs(theirs).max())


def check_equal(models, name: str, request: dict, images=()) -> float:
    llm, hf, processor = models(name)
    token_ids, logits = llm.logits(request)
    error = relative_error(logits, reference_logits(hf, processor, token_ids, images))
    print(f"{name}: {len(images)} image(s), {len(token_ids)} tokens: max|diff|/max|logits| = {error:.1e}")
    assert error < TOLERANCE
    return error


def test_text_only_prompt(models):
    check_equal(models, "hub-untied", {"prompt": prompt(0, "Describe a cat sitting on a red sofa.")})


@pytest.mark.parametrize("name", list(CHECKPOINTS))
def test_one_image(models, name):
    images = [image(100, 170)]  # 6 x 10 patches: wider than the 8 x 8 position table, so it is resampled
    check_equal(models, name, {"prompt": prompt(1), "multi_modal_data": {"image": images}}, images)


def test_several_images_of_different_sizes_in_one_prompt(models):
    # 2x3, 6x2 and 3x5 merged tokens: the prompt fits the one-image test's programs (64 tokens, 256 patch rows)
    images = [image(50, 100, 1), image(200, 60, 2), image(100, 170, 3)]
    request = {"prompt": prompt(3, "Compare them."), "multi_modal_data": {"image": images}}
    check_equal(models, "hub-untied", request, images)
    llm, hf, processor = models("hub-untied")
    processed = llm.process(request)
    input_ids = torch.tensor([processed.token_ids.tolist()])
    grids = processor(images=images, return_tensors="pt")["image_grid_thw"]
    want, delta = hf.model.get_rope_index(input_ids, (input_ids == IMAGE_PAD).int(), image_grid_thw=grids)
    np.testing.assert_array_equal(processed.rope_positions, want[:, 0].numpy())
    assert processed.rope_delta == int(delta)


def test_zero_deepstack_features_move_the_logits_far_past_the_tolerance(models):
    """The comparisons above would catch a decoder that ignores the DeepStack features: with the DeepStack
    mergers' last layer zeroed (the features all zeros; the same program as ``test_one_image``) they fail."""
    llm, hf, processor = models("hub-untied")
    state = jax.tree_util.tree_map_with_path(
        lambda path, leaf: jnp.zeros_like(leaf) if "deepstack_merger_list" in str(path) and "linear_fc2" in str(path)
        else leaf, llm.state)
    images = [image(100, 170)]
    token_ids, logits = dataclasses.replace(llm, state=state).logits(
        {"prompt": prompt(1), "multi_modal_data": {"image": images}})
    assert relative_error(logits, reference_logits(hf, processor, token_ids, images)) > 1e-2


def test_placeholder_rows_carry_the_embedding_then_each_layers_deepstack_features(models):
    llm = models("hub-untied")[0]
    processed = llm.process({"prompt": prompt(1), "multi_modal_data": {"image": [image(50, 100)]}})
    encode = jax.jit(lambda state, mm: nnx.merge(llm.graphdef, state).multimodal_embeddings(**mm))
    rows = np.asarray(encode(llm.state, dict(processed.mm_kwargs)))
    count, width = processed.num_mm_tokens, SPEC.hidden_size
    assert rows.shape == (256 // 4, (1 + len(SPEC.deepstack_visual_indexes)) * width)  # the bucket's merge units
    assert np.abs(rows[:count]).min() > 0 and not rows[count:].any()
    # The engine's form: each sequence its own rows (an arena) and an index (its embedding slots).
    embeds = jnp.asarray(np.random.default_rng(0).standard_normal((2, 5, width)), jnp.float32)
    index = jnp.asarray([[-1, 0, 1, -1, 2], [3, -1, -1, 0, -1]])
    shared, shared_stack = merge_rows(embeds, jnp.asarray(rows)[None], index)
    arenas, arena_stack = merge_rows(embeds, jnp.stack([jnp.asarray(rows)] * 2), index)
    np.testing.assert_array_equal(shared, arenas)
    np.testing.assert_array_equal(shared[0, 1], rows[0, :width])
    np.testing.assert_array_equal(shared[1, 1], embeds[1, 1])
    for layer in range(2):
        added = shared_stack.add(jnp.zeros_like(embeds), layer)
        np.testing.assert_array_equal(added, arena_stack.add(jnp.zeros_like(embeds), layer))
        np.testing.assert_array_equal(added[0, 4], rows[2, (1 + layer) * width:(2 + layer) * width])
        assert not added[0, 0].any() and not added[1, 2].any()
    assert isinstance(shared_stack, DeepStack) and shared_stack.num_layers == 2


# (height, width): tiny, huge, extreme aspect ratios (199:1 both ways), sizes on smart_resize's rounding edges
# (48 and 80 px are 1.5 and 2.5 times 32: Python rounds halves to even), the budget's own limits.
SIZES = [(1, 1), (10, 10), (4000, 3000), (3000, 4000), (10, 1990), (1990, 10), (48, 80), (80, 48), (16, 16),
         (100, 170), (452, 452), (453, 453), (64, 3200), (33, 47)]


@pytest.mark.parametrize("max_pixels", [None, 60 * 32 * 32])
def test_placeholder_counts_equal_transformers_image_processor(models, max_pixels):
    """Per request budgets too: a request may lower the model's ``max_pixels``."""
    llm, _, processor = models("hub-untied")
    size = {} if max_pixels is None else {"size": {"shortest_edge": SPEC.min_pixels, "longest_edge": max_pixels}}
    kwargs = {} if max_pixels is None else {"mm_processor_kwargs": {"max_pixels": max_pixels}}
    for height, width in SIZES:
        item = image(height, width)
        processed = llm.process({"prompt": prompt(1), "multi_modal_data": {"image": [item]}, **kwargs})
        grid = processor(images=[item], return_tensors="np", **size)["image_grid_thw"][0]
        assert processed.num_mm_tokens == int(np.prod(grid)) // 4, (height, width)
        assert list(processed.token_ids).count(IMAGE_PAD) == processed.num_mm_tokens


def test_a_request_may_not_raise_the_pixel_budget(models):
    llm = models("hub-untied")[0]
    request = {"prompt": prompt(1), "multi_modal_data": {"image": [image(40, 40)]},
               "mm_processor_kwargs": {"max_pixels": 2 * BUDGET["max_pixels"]}}
    with pytest.raises(ValueError, match="max_pixels=409600 is above the model's pixel budget"):
        llm.process(request)


def _refusal(config, field: str, error: type[Exception]) -> None:
    with pytest.raises(error, match=field):
        Qwen3VLConfig.from_hf(config)


def test_unsupported_config_fields_are_refused_by_name(tmp_path_factory, models):
    path = models("hub-untied")[0].model_config.model
    fresh = functools.partial(AutoConfig.from_pretrained, path)
    cfg = fresh()
    cfg.text_config.rope_parameters = {**cfg.text_config.rope_parameters, "rope_type": "yarn", "factor": 2.0}
    _refusal(cfg, "rope_type='yarn'", NotImplementedError)
    cfg = fresh()
    cfg.text_config.rope_parameters = {**cfg.text_config.rope_parameters, "mrope_section": [2, 2, 2]}
    _refusal(cfg, "mrope_section", ValueError)
    cfg = fresh()
    cfg.text_config.hidden_act = "relu2"
    _refusal(cfg, "text_config.hidden_act", NotImplementedError)
    cfg = fresh()
    cfg.vision_config.deepstack_visual_indexes = [0, 1, 2, 3]  # 4 feature sets for 3 decoder layers
    _refusal(cfg, "deepstack_visual_indexes", ValueError)
    cfg = fresh()
    cfg.vision_config.out_hidden_size = 32
    _refusal(cfg, "out_hidden_size", ValueError)
    cfg = fresh()
    cfg.vision_config.rope_parameters = {"rope_type": "yarn", "rope_theta": 1e4}
    _refusal(cfg, "vision_config.rope_parameters.rope_type", NotImplementedError)
    cfg = fresh()
    cfg.image_token_id = 10**6
    _refusal(cfg, "image_token_id", ValueError)
    # and through mmjax.load, before any weight is read
    broken = tmp_path_factory.mktemp("yarn")
    for name in os.listdir(path):
        shutil.copy(os.path.join(path, name), broken)
    cfg = fresh()
    cfg.text_config.rope_parameters = {**cfg.text_config.rope_parameters, "rope_type": "yarn", "factor": 2.0}
    cfg.save_pretrained(broken)
    with pytest.raises(NotImplementedError, match="rope_type='yarn'"):
        mmjax.load(broken)


def test_every_parameter_has_a_partition_rule(models):
    cfg = models("hub-untied")[0].model.config
    paths = param_paths(QWEN3_VL.abstract_model(cfg))
    assert any(p[-2] == "q_norm" for p in paths) and any(p[1] == "deepstack_merger_list" for p in paths)
    for model_axis in (1, 2, 4):
        rules = QWEN3_VL.partition_rules(cfg, model_axis)
        for path in paths:
            spec_for(path, rules)
