"""Our jitted LLaVA forward equals transformers' LlavaForConditionalGeneration.

Each tiny checkpoint is written by transformers, loaded by mmjax through the
same path as a real one, and both models see the same input_ids and
pixel_values (several images per prompt). Float32 logits must agree to
1e-4 of their largest magnitude.
"""

from __future__ import annotations

import os

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file, save_file

from mmjax.models.common.attend import dense_causal_attention
from mmjax.models.llava import forward
from mmjax.models.llava import load_llava
from tiny_llava import (
    VARIANTS, checkpoint, loaded, our_logits, positions_for, prompt, reference_logits, relative_error,
)  # fmt: skip

F32_TOLERANCE = 1e-4
BF16_TOLERANCE = 5e-2


@pytest.mark.parametrize("name", list(VARIANTS))
def test_logits_match_transformers(name):
    model, hf_config = loaded(name)
    input_ids, pixel_values = prompt(hf_config.image_token_id, model.config.image_tokens_per_image)
    want = reference_logits(name, input_ids, pixel_values)
    got = our_logits(model, input_ids, pixel_values)
    assert got.shape == want.shape and got.dtype == np.float32
    error = relative_error(got, want)
    print(f"{name}: max|diff|/max|logits| = {error:.2e}")
    assert error <= F32_TOLERANCE


def test_text_only_prompt_matches_transformers():
    model, _ = loaded("gqa_default")
    input_ids = np.random.default_rng(5).integers(4, 300, (2, 17)).astype(np.int32)
    error = relative_error(our_logits(model, input_ids, None), reference_logits("gqa_default", input_ids, None))
    assert error <= F32_TOLERANCE


def test_bfloat16_weights_stay_close_to_float32_reference():
    model, hf_config = loaded("gqa_default", jnp.bfloat16)
    leaf = model.language_model.layers[0].self_attn.q_proj.kernel[...]
    assert leaf.dtype == jnp.bfloat16
    input_ids, pixel_values = prompt(hf_config.image_token_id, model.config.image_tokens_per_image)
    got = our_logits(model, input_ids, pixel_values)
    error = relative_error(got, reference_logits("gqa_default", input_ids, pixel_values))
    print(f"bfloat16: max|diff|/max|logits| = {error:.2e}")
    assert got.dtype == np.float32 and error <= BF16_TOLERANCE


def _rename_checkpoint(src: str, dst: str, rename) -> str:
    os.makedirs(dst)
    for file in os.listdir(src):
        if file != "model.safetensors":
            os.link(os.path.join(src, file), os.path.join(dst, file))
    tensors = load_file(os.path.join(src, "model.safetensors"))
    renamed = {rename(k): v for k, v in tensors.items()}
    save_file(renamed, os.path.join(dst, "model.safetensors"), {"format": "pt"})
    return dst


@pytest.mark.parametrize(
    "layout, rename",
    [
        # the published llava-hf checkpoints nest the CLIP tower one level deeper
        ("published", lambda k: k.replace("vision_tower.", "vision_tower.vision_model.", 1)),
        # transformers' in-memory names, as other writers emit them
        (
            "in_memory",
            lambda k: k.replace("language_model.model.", "model.language_model.")
            .replace("language_model.lm_head.", "lm_head.")
            .replace("vision_tower.", "model.vision_tower.", 1)
            .replace("multi_modal_projector.", "model.multi_modal_projector."),
        ),
    ],
)
def test_every_published_name_layout_loads_to_the_same_logits(tmp_path, layout, rename):
    path = _rename_checkpoint(checkpoint("gqa_default"), str(tmp_path / layout), rename)
    model, hf_config = load_llava(path)
    input_ids, pixel_values = prompt(hf_config.image_token_id, model.config.image_tokens_per_image)
    want = our_logits(loaded("gqa_default")[0], input_ids, pixel_values)
    np.testing.assert_array_equal(our_logits(model, input_ids, pixel_values), want)


def test_sharded_checkpoint_has_an_index():
    files = os.listdir(checkpoint("mha_full_sharded_tied"))
    assert "model.safetensors.index.json" in files
    assert sum(f.endswith(".safetensors") for f in files) > 1


def test_padding_positions_do_not_change_real_tokens():
    """Left padding marked with position -1 leaves the real tokens' logits unchanged."""
    model, _ = loaded("gqa_default")
    input_ids = np.random.default_rng(6).integers(4, 300, (1, 11)).astype(np.int32)
    padded = np.concatenate([np.zeros((1, 4), np.int32), input_ids], axis=1)
    positions = np.concatenate([np.full((1, 4), -1, np.int32), positions_for(input_ids)], axis=1)
    graphdef, state = nnx.split(model)
    got = np.asarray(forward(graphdef, state, jnp.asarray(padded), jnp.asarray(positions)))[:, 4:]
    np.testing.assert_allclose(got, our_logits(model, input_ids, None), rtol=1e-5, atol=1e-5)


def test_attention_seam_serves_every_layer():
    """A replacement ``attend`` sees every layer, and the dense one reproduces the default logits."""
    model, _ = loaded("gqa_default")
    input_ids = np.random.default_rng(7).integers(4, 300, (1, 6)).astype(np.int32)
    seen = []

    def recording_attend(q, k, v, positions, cache, *, window=None):  # layers call it in order, with their cache
        seen.append((len(seen), q.shape, k.shape, window))
        return dense_causal_attention(q, k, v, positions, sliding_window=window), cache

    got = model(jnp.asarray(input_ids), jnp.asarray(positions_for(input_ids)), attend=recording_attend)
    cfg = model.config.text
    assert seen == [
        (i, (1, 6, cfg.num_heads, cfg.head_dim), (1, 6, cfg.num_kv_heads, cfg.head_dim), None)
        for i in range(cfg.num_layers)
    ]
    np.testing.assert_allclose(np.asarray(got), our_logits(model, input_ids, None), rtol=1e-5, atol=1e-5)
