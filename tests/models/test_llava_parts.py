"""Pieces of the LLaVA forward, checked without a checkpoint: merge, counts, rotary frequencies."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.models.common.decoder_config import DecoderConfig
from mmjax.models.common.rotary import rope_inv_freq
from mmjax.models.llava import check_placeholder_count, merge_image_features

IMG = 9


@pytest.mark.parametrize(
    "input_ids, expected",
    [
        # token embeddings are 100 + id; feature k is -(k + 1)
        ([[1, IMG, IMG, 2]], [[101, -1, -2, 102]]),
        ([[IMG, 3], [4, IMG]], [[-1, 103], [104, -2]]),  # row-major across the batch
        ([[IMG, IMG, IMG], [5, 6, 7]], [[-1, -2, -3], [105, 106, 107]]),
        ([[1, 2, 3]], [[101, 102, 103]]),  # no placeholders: embeddings untouched
    ],
)
def test_merge_writes_features_in_placeholder_order(input_ids, expected):
    ids = jnp.asarray(input_ids)
    embeds = (100.0 + ids)[..., None].astype(jnp.float32)
    features = -(1.0 + jnp.arange(3, dtype=jnp.float32))[:, None]
    merged = jax.jit(merge_image_features, static_argnums=3)(ids, embeds, features, IMG)
    np.testing.assert_array_equal(merged[..., 0], np.array(expected, np.float32))


def test_placeholder_count_mismatch_is_refused():
    with pytest.raises(ValueError, match="tokens: 2, features: 3"):
        check_placeholder_count(jnp.asarray([[IMG, 1, IMG]]), 3, IMG)
    check_placeholder_count(jnp.asarray([[IMG, IMG, IMG]]), 3, IMG)


def _rope_cases():
    llama3 = dict(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=8192)
    return [
        ("default", {}, 10_000.0),
        ("linear", {"factor": 4.0}, 10_000.0),
        ("llama3", llama3, 500_000.0),
    ]


@pytest.mark.parametrize("rope_type, params, theta", _rope_cases(), ids=lambda c: c if isinstance(c, str) else "")
def test_rotary_frequencies_match_transformers(rope_type, params, theta):
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    hf = LlamaConfig(
        hidden_size=4096, num_attention_heads=32, max_position_embeddings=131072,
        rope_parameters={"rope_type": rope_type, "rope_theta": theta, **params},
    )  # fmt: skip
    cfg = DecoderConfig.from_hf(hf)
    if rope_type == "default":  # the default lives on the model class, not in the table
        want, _ = LlamaRotaryEmbedding.compute_default_rope_parameters(hf)
    else:
        want, _ = ROPE_INIT_FUNCTIONS[rope_type](hf)
    np.testing.assert_allclose(rope_inv_freq(cfg), want.numpy(), rtol=1e-6)
