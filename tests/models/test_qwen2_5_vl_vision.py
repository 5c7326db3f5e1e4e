"""The Qwen2.5-VL vision tower against transformers' ``Qwen2_5_VisionTransformerPretrainedModel`` (float32).

A tiny random tower (distinct widths; windows of 2x2 merge units, so grids whose
merge grid is not a multiple of 2 get partial windows; full attention at blocks
1 and 3) is written under the published ``visual.*`` names and read back through
the weight rows. Every call runs in the bucket of 256 rows (or unpadded for the
padding check, or in 512 rows past the dense attention), so the whole file compiles
three programs.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from flax import nnx

from mmjax.engine import count_compilations
from mmjax.models.common.segment_attention import DENSE_MAX_ROWS
from mmjax.models.qwen2_5_vl.vision import Qwen2_5_VisionConfig, Qwen2_5_VisionTransformer, vision_forward
from mmjax.models.qwen2_5_vl.vision_layout import (
    bucket_rows, num_patches, pad_rows, patch_buckets, rotary_ids, windowed_vision_layout,
)  # fmt: skip
from mmjax.models.qwen2_5_vl.vision_weights import VISION_ALIASES, vision_targets
from tiny_qwen_vision import load_tower, patches, randomize, relative_error, write_checkpoint

BUCKET = 256
BIG_BUCKET = 512
TOLERANCE = 1e-5  # relative to the largest output; float32 measures about 1e-6


@functools.cache
def towers():
    """``(transformers tower, our config, graphdef, state)``, built once for the file."""
    from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import Qwen2_5_VLVisionConfig
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionTransformerPretrainedModel

    hf_config = Qwen2_5_VLVisionConfig(
        depth=4, hidden_size=48, intermediate_size=80, num_heads=2, out_hidden_size=56,
        window_size=56, fullatt_block_indexes=[1, 3],  # 56 px = 2 merge units of 2 x 14 px
    )  # fmt: skip
    hf = Qwen2_5_VisionTransformerPretrainedModel(hf_config).eval()
    randomize(hf)
    cfg = Qwen2_5_VisionConfig.from_hf(hf_config)
    directory = write_checkpoint(hf, "visual.")
    tower = load_tower(lambda: Qwen2_5_VisionTransformer(cfg, rngs=nnx.Rngs(0)),
                       lambda paths: vision_targets(cfg, paths), directory, VISION_ALIASES)
    return (hf, cfg, *nnx.split(tower))


def ours(grids, pixels: np.ndarray, rows: int = BUCKET) -> np.ndarray:
    _, cfg, graphdef, state = towers()
    layout = windowed_vision_layout(grids, rows, merge=2, window_size=cfg.window_size, patch_size=cfg.patch_size)
    return np.asarray(vision_forward(graphdef, state, pad_rows(pixels, rows), layout))


def theirs(grids, pixels: np.ndarray) -> np.ndarray:
    hf = towers()[0]
    with torch.no_grad():
        return hf(torch.from_numpy(pixels), grid_thw=torch.tensor(grids)).pooler_output.numpy()


def check_equal(grids, seed: int = 0, rows: int = BUCKET) -> None:
    pixels = patches(grids, towers()[1].patch_dim, seed)
    reference = theirs(grids, pixels)
    out = ours(grids, pixels, rows)
    assert relative_error(out[: len(reference)], reference) < TOLERANCE
    assert not out[len(reference):].any(), "rows past the items' must be zeros"


def test_one_image():
    check_equal([(1, 6, 10)])  # merge grid 3 x 5: windows of 2 x 2, 2 x 1, 1 x 2 and 1 x 1 units


def test_several_images_of_different_grids_in_one_call():
    check_equal([(1, 6, 10), (1, 8, 4), (1, 2, 2), (1, 4, 14), (1, 10, 6)], seed=1)


def test_video_with_an_image():
    check_equal([(3, 6, 6), (1, 4, 6)], seed=2)  # full attention per frame; windows never span frames


def test_a_bucket_past_the_dense_attention_equals_transformers():
    # Full-attention blocks take the blockwise attention here, windowed ones the banded (windows of 16 rows).
    assert BUCKET <= DENSE_MAX_ROWS < BIG_BUCKET and 3 * 16 < BIG_BUCKET
    check_equal([(1, 6, 10), (2, 8, 4), (1, 16, 14), (3, 6, 6)], seed=4, rows=BIG_BUCKET)


def test_padded_call_equals_the_unpadded_rows_and_padding_never_leaks():
    grids = [(1, 6, 10), (2, 4, 4)]
    pixels = patches(grids, towers()[1].patch_dim, seed=3)
    count = num_patches(grids)
    exact = ours(grids, pixels, rows=count)
    noisy = pad_rows(pixels, BUCKET)
    noisy[count:] = np.nan  # whatever sits in the padding rows reaches no real row
    _, cfg, graphdef, state = towers()
    layout = windowed_vision_layout(grids, BUCKET, merge=2, window_size=cfg.window_size, patch_size=cfg.patch_size)
    padded = np.asarray(vision_forward(graphdef, state, noisy, layout))
    assert relative_error(padded[: count // 4], exact) < TOLERANCE
    assert not padded[count // 4:].any()


def test_one_program_serves_every_mix_in_a_bucket():
    mixes = [[(1, 4, 4)], [(1, 2, 30), (1, 30, 2)], [(4, 4, 6), (1, 6, 6), (1, 2, 2)]]
    ours(mixes[0], patches(mixes[0], towers()[1].patch_dim))  # compiled here if no test before did
    with count_compilations() as compiled:
        for grids in mixes[1:]:
            ours(grids, patches(grids, towers()[1].patch_dim))
    assert compiled[0] == 0


@pytest.mark.parametrize("grids", [[(1, 6, 10)], [(2, 8, 4), (1, 2, 2)], [(1, 16, 6), (3, 4, 10)]])
def test_layout_is_transformers_window_order(grids):
    from transformers.vision_utils import get_vision_position_ids, get_vision_window_index

    count = num_patches(grids)
    layout = windowed_vision_layout(grids, count + 8, merge=2, window_size=56, patch_size=14)
    window_index, cu_window_seqlens = get_vision_window_index(torch.tensor(grids), 2, 56, 14)
    assert (layout.window_index[: count // 4] == window_index.numpy()).all()
    assert (layout.window_index[count // 4:] == np.arange(count // 4, count // 4 + 2)).all()  # padding stays put
    # Each window is a run of rows, starting where transformers' cu_window_seqlens say.
    segments = layout.window_segments[:count]
    starts = np.flatnonzero(np.diff(segments, prepend=-2))
    assert starts.tolist() == cu_window_seqlens.numpy()[:-1].tolist()
    assert len(set(segments.tolist())) == len(starts)
    positions = get_vision_position_ids(torch.tensor(grids), 2).numpy()
    unit_rows = lambda a: a.reshape(-1, 4, *a.shape[1:])[window_index.numpy()].reshape(a.shape)  # noqa: E731
    assert (layout.rotary_ids[:count] == unit_rows(positions)).all()
    assert (rotary_ids([tuple(g) for g in grids], 2) == positions).all()
    assert (layout.window_segments[count:] == -1).all() and (layout.frame_segments[count:] == -1).all()
    assert layout.valid.tolist() == [True] * count + [False] * 8


def test_bucket_rule():
    assert patch_buckets(5000) == (256, 512, 1024, 2048, 4096, 5000)
    assert patch_buckets(1000, smallest=64) == (64, 128, 256, 512, 1000)
    assert all(b % 4 == 0 for b in patch_buckets(1003))
    assert bucket_rows(257, patch_buckets(5000)) == 512 and bucket_rows(256, patch_buckets(5000)) == 256
    with pytest.raises(ValueError, match="exceed the largest vision bucket"):
        bucket_rows(5001, patch_buckets(5000))


def test_layout_refuses_what_the_tower_cannot_take():
    with pytest.raises(ValueError, match=r"grid_thw\[1\] = \(1, 3, 4\)"):
        windowed_vision_layout([(1, 2, 2), (1, 3, 4)], 64, merge=2, window_size=56, patch_size=14)
    with pytest.raises(ValueError, match="must be a multiple of 4 and hold the 16 patches"):
        windowed_vision_layout([(1, 4, 4)], 12, merge=2, window_size=56, patch_size=14)
    with pytest.raises(ValueError, match="smaller than one merge unit"):
        windowed_vision_layout([(1, 4, 4)], 16, merge=2, window_size=20, patch_size=14)
