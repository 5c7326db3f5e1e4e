"""``max_vision_tokens`` bounds every Qwen3-VL video's tokens, from its frame count alone (no pixels)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from mmjax.models.qwen3_vl.video_budget import max_vision_tokens, video_grid_of
from mmjax.processing.qwen_vl_config import QwenVideoConfig
from mmjax.registry.video_items import VideoItem

#: The tiny checkpoints' video config, and the Hub's (Qwen3-VL-2B-Instruct's size), and options.
TINY = QwenVideoConfig.from_hf_dict({"size": {"longest_edge": 262144, "shortest_edge": 4096}}, family="qwen3_vl")
HUB = QwenVideoConfig.from_hf_dict({"size": {"longest_edge": 25165824, "shortest_edge": 4096}}, family="qwen3_vl")
CONFIGS = {
    "tiny": TINY,
    "hub": HUB,
    "every-frame": dataclasses.replace(TINY, do_sample_frames=False),
    "cap": dataclasses.replace(TINY, cap_pixels_per_frame=True, max_video_tokens=30),
    "num-frames": dataclasses.replace(TINY, fps=None, num_frames=9),
    "small-min": dataclasses.replace(TINY, min_pixels=200000),
}


def shaped(frames: int, height: int, width: int, fps: float | None) -> VideoItem:
    """A video of that shape without its pixels (the grid reads the shape only)."""
    return VideoItem(np.broadcast_to(np.zeros((), np.uint8), (frames, height, width, 3)), {} if fps is None else
                     {"fps": fps})


def tokens(item: VideoItem, config: QwenVideoConfig) -> int:
    (t, h, w), _ = video_grid_of(item, config)
    return t * h * w // config.merge_size**2


@pytest.mark.parametrize("name", list(CONFIGS))
def test_no_video_has_more_tokens_than_the_bound(name):
    config, rng, max_frames = CONFIGS[name], np.random.default_rng(0), 300
    bound = max_vision_tokens(config, max_frames)
    most = 0
    for _ in range(400):
        frames = int(rng.integers(2, max_frames + 1))
        short = int(rng.integers(1, 120))
        ratio = float(rng.choice([1.0, rng.uniform(1, 10), rng.uniform(100, 199.5)]))
        height, width = (short, max(1, int(short * ratio)))[:: 1 if rng.random() < 0.5 else -1]
        fps = float(rng.choice([2.0, 24.0, 0.5, 60.0]))
        try:
            most = max(most, tokens(shaped(frames, height, width, fps), config))
        except ValueError:  # an aspect ratio over 200 after rounding: refused, as transformers does
            continue
    assert 0 < most <= bound, (most, bound)


def test_many_thin_frames_go_past_the_pixel_budget_and_the_bound_holds_them():
    """768 frames of 1 x 199: each keeps its short side at 32 px, so the video has far more tokens than
    ``longest_edge / (2 * 32**2)``; the bound (the one the registry's max tokens uses) is above them."""
    item = shaped(1536, 16, 16 * 199, 4.0)  # sampled at 2 fps: 768 frames
    count = tokens(item, HUB)
    assert count > HUB.max_pixels // (2 * 32 * 32)
    assert count <= max_vision_tokens(HUB, 1536)
