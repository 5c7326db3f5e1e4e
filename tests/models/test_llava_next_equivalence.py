"""Our jitted LLaVA-NeXT forward equals transformers' LlavaNextForConditionalGeneration.

Tiny checkpoints written by transformers, loaded through ``load_llava_next``.
Both models see the same token ids; transformers gets its processor's padded
``pixel_values`` and ``image_sizes``, we get the same tiles re-laid by
``pack_images`` (real tiles only, bucketed) and the precomputed placeholder map.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from mmjax.processing.anyres_layout import TEXT, pack_images, tile_buckets
from tiny_llava_next import (
    SIX_SIZES, VARIANTS, checkpoint, hf_pixels, images, loaded, our_logits, prompt_rows, reference_logits,
    relative_error, torch_model,
)  # fmt: skip

F32_TOLERANCE = 1e-4


def _inputs(name: str, sizes, rows_of_images):
    model, hf_config = loaded(name)
    geometry = model.config.geometry
    pixel_values, image_sizes = hf_pixels(name, images(sizes))
    counts = [geometry.num_image_tokens(h, w) for h, w in sizes]
    input_ids = prompt_rows(hf_config.image_token_id, [[counts[i] for i in row] for row in rows_of_images])
    packed = pack_images(geometry, pixel_values, image_sizes, tile_buckets(len(sizes) * geometry.max_tiles))
    return model, input_ids, pixel_values, image_sizes, packed


@pytest.mark.parametrize("name", list(VARIANTS))
def test_six_sizes_in_one_batch_match_transformers(name):
    """Three prompts with two images each: six sizes and aspect ratios, two images per prompt."""
    model, input_ids, pixel_values, image_sizes, packed = _inputs(name, SIX_SIZES, [[0, 1], [2, 3], [4, 5]])
    want = reference_logits(name, input_ids, pixel_values, image_sizes)
    got = our_logits(model, input_ids, packed)
    error = relative_error(got, want)
    print(f"{name}: six sizes, max|diff|/max|logits| = {error:.2e}")
    assert got.shape == want.shape and error <= F32_TOLERANCE


@pytest.mark.parametrize("size", [(1, 97), (97, 1), (30, 30), (90, 30), (55, 176)])
def test_single_extreme_image_matches_transformers(size):
    """Degenerate aspect ratios (one pixel high: the unpadded grid keeps one row) and exact pinpoint sizes."""
    model, input_ids, pixel_values, image_sizes, packed = _inputs("vicuna", [size], [[0]])
    want = reference_logits("vicuna", input_ids, pixel_values, image_sizes)
    error = relative_error(our_logits(model, input_ids, packed), want)
    assert error <= F32_TOLERANCE, f"{size}: {error:.2e}"


def test_placeholder_count_equals_transformers_feature_count():
    """The token count that sizes the prompt equals the features transformers' model produces."""
    import torch

    name = "vicuna"
    model, _ = loaded(name)
    pixel_values, image_sizes = hf_pixels(name, images(SIX_SIZES))
    with torch.no_grad():
        pixels, sizes = torch.from_numpy(pixel_values), torch.from_numpy(image_sizes)
        out = torch_model(name).model.get_image_features(pixels, sizes)
    theirs = [f.shape[0] for f in out.pooler_output]
    assert theirs == [model.config.geometry.num_image_tokens(h, w) for h, w in SIX_SIZES]


def test_text_only_prompt_matches_transformers():
    import torch

    model, _ = loaded("vicuna")
    input_ids = np.random.default_rng(5).integers(4, 300, (2, 17)).astype(np.int32)
    with torch.no_grad():
        want = torch_model("vicuna")(input_ids=torch.from_numpy(input_ids.astype(np.int64))).logits.numpy()
    assert relative_error(our_logits(model, input_ids, None), want) <= F32_TOLERANCE


def test_wrong_placeholder_count_is_a_clear_error():
    model, input_ids, _, _, packed = _inputs("vicuna", SIX_SIZES[:2], [[0, 1]])
    image_token = model.config.llava.image_token_index
    short = input_ids.copy()
    short[0, np.flatnonzero(short[0] == image_token)[-1]] = 5  # one placeholder too few
    with pytest.raises(ValueError, match=f"tokens: {int((input_ids == image_token).sum()) - 1}, features"):
        model(short, np.zeros_like(short), packed.pixel_values, tile_valid=packed.tile_valid,
              placeholder_rows=packed.placeholder_rows)  # fmt: skip
    assert (np.asarray(packed.placeholder_rows) != TEXT).sum() == (input_ids == image_token).sum()


def test_checkpoint_has_the_processor_configs():
    files = os.listdir(checkpoint("vicuna"))
    assert {"config.json", "model.safetensors", "tokenizer.json", "processor_config.json"} <= set(files)
