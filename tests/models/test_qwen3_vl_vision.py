"""The Qwen3-VL vision tower against transformers' ``Qwen3VLVisionModel`` (float32), DeepStack features included.

A tiny random tower (distinct widths; an 8 x 8 learned position grid, so items
both smaller and larger than it resample it; DeepStack after blocks 2 and 0,
listed out of order) is written under the published ``model.visual.*`` names
and read back through the weight rows. Calls run in the bucket of 256 rows (or
unpadded for the padding check, and one of 512 rows past the dense attention): the
file compiles three programs.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from flax import nnx

from mmjax.engine import count_compilations
from mmjax.models.common.segment_attention import DENSE_MAX_ROWS
from mmjax.models.common.vision_packing import num_patches, pad_rows
from mmjax.models.qwen3_vl.vision import Qwen3VisionConfig, Qwen3VisionModel, vision_forward
from mmjax.models.qwen3_vl.vision_layout import vision_layout
from mmjax.models.qwen3_vl.vision_weights import VISION_ALIASES, vision_targets
from tiny_qwen_vision import load_tower, patches, randomize, relative_error, write_checkpoint

BUCKET = 256
BIG_BUCKET = 512
TOLERANCE = 1e-5  # relative to the largest output; float32 measures about 1e-6


@functools.cache
def towers():
    """``(transformers tower, our config, graphdef, state)``, built once for the file."""
    from transformers.models.qwen3_vl.configuration_qwen3_vl import Qwen3VLVisionConfig
    from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLVisionModel

    hf_config = Qwen3VLVisionConfig(
        depth=4, hidden_size=40, intermediate_size=72, num_heads=2, out_hidden_size=56,
        num_position_embeddings=64, deepstack_visual_indexes=[2, 0],
    )  # fmt: skip
    hf = Qwen3VLVisionModel(hf_config).eval()
    randomize(hf, seed=1)
    cfg = Qwen3VisionConfig.from_hf(hf_config)
    directory = write_checkpoint(hf, "model.visual.")
    tower = load_tower(lambda: Qwen3VisionModel(cfg, rngs=nnx.Rngs(0)),
                       lambda paths: vision_targets(cfg, paths), directory, VISION_ALIASES)
    return (hf, cfg, *nnx.split(tower))


def ours(grids, pixels: np.ndarray, rows: int = BUCKET) -> list[np.ndarray]:
    """``[embeddings, *deepstack features]``."""
    _, cfg, graphdef, state = towers()
    layout = vision_layout(grids, rows, merge=2, side=cfg.position_side)
    merged, deepstack = vision_forward(graphdef, state, pad_rows(pixels, rows), layout)
    return [np.asarray(a) for a in (merged, *deepstack)]


def theirs(grids, pixels: np.ndarray) -> list[np.ndarray]:
    hf = towers()[0]
    with torch.no_grad():
        out = hf(torch.from_numpy(pixels), grid_thw=torch.tensor(grids))
    return [a.numpy() for a in (out.pooler_output, *out.deepstack_features)]


def check_equal(grids, seed: int = 0, rows: int = BUCKET) -> None:
    pixels = patches(grids, towers()[1].patch_dim, seed)
    references = theirs(grids, pixels)
    outputs = ours(grids, pixels, rows)
    assert len(outputs) == len(references) == 3
    for out, reference in zip(outputs, references):
        assert relative_error(out[: len(reference)], reference) < TOLERANCE
        assert not out[len(reference):].any(), "rows past the items' must be zeros"


def test_one_image():
    check_equal([(1, 6, 10)])


def test_several_images_of_different_grids_in_one_call():
    # Smaller and larger than the 8 x 8 position grid, square and extreme aspect ratios.
    check_equal([(1, 6, 10), (1, 12, 4), (1, 2, 2), (1, 2, 30), (1, 10, 8)], seed=1)


def test_video_with_an_image():
    check_equal([(3, 6, 6), (1, 4, 6)], seed=2)


def test_a_bucket_past_the_dense_attention_equals_transformers():
    assert BUCKET <= DENSE_MAX_ROWS < BIG_BUCKET  # the blocks take the blockwise attention here
    check_equal([(1, 6, 10), (2, 8, 4), (1, 16, 14), (3, 6, 6)], seed=4, rows=BIG_BUCKET)


def test_padded_call_equals_the_unpadded_rows_and_padding_never_leaks():
    grids = [(1, 6, 10), (2, 4, 4)]
    pixels = patches(grids, towers()[1].patch_dim, seed=3)
    count = num_patches(grids)
    exact = ours(grids, pixels, rows=count)
    _, _, graphdef, state = towers()
    noisy = pad_rows(pixels, BUCKET)
    noisy[count:] = np.nan  # whatever sits in the padding rows reaches no real row
    merged, deepstack = vision_forward(graphdef, state, noisy, vision_layout(grids, BUCKET, merge=2, side=8))
    for padded, unpadded in zip([merged, *deepstack], exact):
        padded = np.asarray(padded)
        assert relative_error(padded[: count // 4], unpadded) < TOLERANCE
        assert not padded[count // 4:].any()


def test_one_program_serves_every_mix_in_a_bucket():
    mixes = [[(1, 4, 4)], [(1, 2, 30), (1, 30, 2)], [(4, 4, 6), (1, 6, 6), (1, 2, 2)]]
    ours(mixes[0], patches(mixes[0], towers()[1].patch_dim))  # compiled here if no test before did
    with count_compilations() as compiled:
        for grids in mixes[1:]:
            ours(grids, patches(grids, towers()[1].patch_dim))
    assert compiled[0] == 0


@pytest.mark.parametrize("grids", [[(1, 6, 10)], [(2, 16, 4), (1, 2, 2)]])
def test_position_taps_are_transformers(grids):
    from transformers.vision_utils import get_vision_interpolation_indices_and_weights, get_vision_position_ids

    count = num_patches(grids)
    layout = vision_layout(grids, count + 4, merge=2, side=8)
    indices, weights = get_vision_interpolation_indices_and_weights(
        torch.tensor(grids), 8, mode="bilinear", align_corners=True, spatial_merge_size=2
    )
    assert (layout.pos_indices[:count] == indices.numpy()).all()
    np.testing.assert_allclose(layout.pos_weights[:count], weights.numpy(), rtol=0, atol=1e-7)
    assert (layout.rotary_ids[:count] == get_vision_position_ids(torch.tensor(grids), 2).numpy()).all()
    frames = np.repeat(np.arange(sum(t for t, _, _ in grids)), [h * w for t, h, w in grids for _ in range(t)])
    assert (layout.frame_segments[:count] == frames).all()
    assert not layout.pos_weights[count:].any() and (layout.frame_segments[count:] == -1).all()
    assert layout.valid.tolist() == [True] * count + [False] * 4
