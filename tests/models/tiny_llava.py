"""Shared helpers for the model tests: tiny checkpoints built once per session, prompts, references.

Not a conftest.py on purpose: tests/registry imports its own ``conftest`` by
name, and a second module of that name would shadow it.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile

import jax.numpy as jnp
import numpy as np
from flax import nnx

from mmjax.models.llava import forward
from mmjax.models.llava import load_llava
from mmjax.testing.checkpoints import make_tiny_llava_checkpoint

_ROOT = tempfile.mkdtemp(prefix="mmjax-tiny-llava-")
atexit.register(shutil.rmtree, _ROOT, ignore_errors=True)

#: name -> make_tiny_llava_checkpoint overrides. Together they cover GQA and MHA,
#: every vision_feature_layer form, both select strategies, sharding, tying,
#: explicit head_dim, rope variants, biases and the Mistral decoder.
VARIANTS: dict[str, dict] = {
    "gqa_default": {},
    "mha_full_sharded_tied": dict(
        num_kv_heads=5, vision_feature_layer=-1, vision_feature_select_strategy="full",
        shard=True, tie_word_embeddings=True, seed=1,
    ),
    "positive_layer_head_dim_linear_rope": dict(
        vision_feature_layer=1, head_dim=12, num_kv_heads=1,
        text_config={"rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 500.0}},
        llava_config={"multimodal_projector_bias": False}, seed=2,
    ),
    "layer_list_llama3_biases": dict(
        vision_feature_layer=[-2, -1], num_kv_heads=5,
        text_config={
            "attention_bias": True, "mlp_bias": True,
            "rope_parameters": {
                "rope_type": "llama3", "factor": 8.0, "rope_theta": 10000.0, "low_freq_factor": 1.0,
                "high_freq_factor": 4.0, "original_max_position_embeddings": 64,
            },
        },
        vision_config={"hidden_act": "gelu"}, seed=3,
    ),
    "mistral_sliding_window": dict(text_model_type="mistral", text_config={"sliding_window": 9}, seed=4),
}  # fmt: skip


@functools.cache
def checkpoint(name: str) -> str:
    """Path of the tiny checkpoint ``name`` (built on first use)."""
    return make_tiny_llava_checkpoint(f"{_ROOT}/{name}", **VARIANTS[name])


@functools.cache
def loaded(name: str, dtype=jnp.float32):
    return load_llava(checkpoint(name), dtype=dtype)


@functools.cache
def torch_model(name: str):
    from transformers import LlavaForConditionalGeneration

    return LlavaForConditionalGeneration.from_pretrained(checkpoint(name)).eval()


def prompt(image_token: int, tokens_per_image: int, seed: int = 0):
    """Two rows of equal length: row 0 holds two images, row 1 one (3 images in all)."""
    rng = np.random.default_rng(seed)
    text = lambda n: list(rng.integers(4, image_token, n))  # noqa: E731
    image = [image_token] * tokens_per_image
    row0 = text(5) + image + text(4) + image + text(3)
    row1 = text(7) + image
    row1 += text(len(row0) - len(row1))
    input_ids = np.array([row0, row1], dtype=np.int32)
    pixel_values = rng.standard_normal((3, 3, 30, 30)).astype(np.float32)
    return input_ids, pixel_values


def positions_for(input_ids: np.ndarray) -> np.ndarray:
    return np.broadcast_to(np.arange(input_ids.shape[1], dtype=np.int32), input_ids.shape)


def reference_logits(name: str, input_ids: np.ndarray, pixel_values: np.ndarray | None) -> np.ndarray:
    import torch

    with torch.no_grad():
        pixels = None if pixel_values is None else torch.from_numpy(pixel_values)
        out = torch_model(name)(input_ids=torch.from_numpy(input_ids.astype(np.int64)), pixel_values=pixels)
    return out.logits.float().numpy()


def our_logits(model, input_ids: np.ndarray, pixel_values: np.ndarray | None) -> np.ndarray:
    graphdef, state = nnx.split(model)
    pixels = None if pixel_values is None else jnp.asarray(pixel_values)
    logits = forward(graphdef, state, jnp.asarray(input_ids), jnp.asarray(positions_for(input_ids)), pixels)
    return np.asarray(logits)


def relative_error(got: np.ndarray, want: np.ndarray) -> float:
    """max |got - want| / max |want|: the tolerance figure the tests assert on."""
    return float(np.abs(got - want).max() / np.abs(want).max())
