"""Qwen-VL sizes and token counts equal transformers' for every kind of size.

The reference is transformers' own code: ``smart_resize`` of the Qwen2-VL image
processor and of the Qwen3-VL video processor, the image processor's
``get_number_of_image_patches`` (what the processors' ``_get_num_multimodal_tokens``
and vLLM call) and the video processors' ``get_num_of_video_patches``. Sizes:
tiny, huge, aspect ratios up to and past 200, every side on a rounding edge
(multiples of the factor and of half of it, one pixel either side), and random
sizes, under the checkpoints' pixel budgets and overrides of them.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize as hf_smart_resize
from transformers.models.qwen3_vl.video_processing_qwen3_vl import smart_resize as hf_smart_resize_frames

from mmjax.processing.qwen_vl_config import QwenVideoConfig
from mmjax.processing.qwen_vl_geometry import (
    image_grid,
    largest_image_size,
    num_image_tokens,
    smart_resize,
    smart_resize_frames,
)
from mmjax.processing.qwen_vl_video import num_video_tokens
from tests.processing.qwen_reference import pil_image_processor, video_processor

#: (patch_size, merge_size, min_pixels, max_pixels): Qwen2-VL's class defaults, Qwen2.5-VL's and Qwen3-VL's
#: checkpoint configs, and overrides (a request's lower budget, a tight band, a budget under 200 factors**2).
BUDGETS = {
    "qwen2-vl": (14, 2, 56 * 56, 28 * 28 * 1280),
    "qwen2.5-vl": (14, 2, 3136, 12845056),
    "qwen3-vl": (16, 2, 65536, 16777216),
    "lowered": (14, 2, 3136, 256 * 28 * 28),
    "band": (16, 2, 150_000, 210_000),
    "tiny-max": (14, 2, 784, 4 * 784),
}


def rounding_edge_sides(factor: int, count: int = 40) -> list[int]:
    """Sides around k * factor and k * factor + factor / 2 (where Python's round goes to even), +-1 pixel."""
    sides = set()
    for k in range(count):
        for base in (k * factor, k * factor + factor // 2):
            sides.update(s for s in (base - 1, base, base + 1) if s > 0)
    return sorted(sides)


def image_sizes(factor: int, seed: int = 0) -> list[tuple[int, int]]:
    rng = np.random.default_rng(seed)
    edges = rounding_edge_sides(factor)
    sizes = [(h, w) for h in range(1, 13) for w in range(1, 13)]  # tiny
    sizes += [(h, w) for h in edges[::3] for w in edges[1::3]]  # both sides on rounding edges
    sizes += [(1, 200), (200, 1), (3, 600), (7, 1400), (28, 5600), (5600, 28), (41, 8200), (100_000, 500)]
    sizes += [(1, 201), (500, 100_001), (14, 2829)]  # aspect ratio over 200
    sizes += [(10_000, 10_000), (20_000, 15_000), (40_000, 30_000), (3584, 3584), (4096, 4096)]  # huge
    sizes += [tuple(s) for s in rng.integers(1, 5001, (1500, 2))]
    sizes += [tuple(s) for s in np.exp(rng.uniform(0, np.log(20_000), (1500, 2))).astype(int) + 1]  # log-uniform
    return [(int(h), int(w)) for h, w in sizes]


def outcome(fn, *args):
    """``fn(*args)``, or the exception type it raised (so that raising is compared too)."""
    try:
        return fn(*args)
    except ValueError:
        return ValueError


@pytest.mark.parametrize("budget", list(BUDGETS))
def test_smart_resize_equals_transformers(budget):
    patch_size, merge_size, min_pixels, max_pixels = BUDGETS[budget]
    factor = patch_size * merge_size
    sizes = image_sizes(factor)
    mine = [outcome(smart_resize, h, w, factor, min_pixels, max_pixels) for h, w in sizes]
    theirs = [outcome(hf_smart_resize, h, w, factor, min_pixels, max_pixels) for h, w in sizes]
    mismatches = [(size, a, b) for size, a, b in zip(sizes, mine, theirs) if a != b]
    assert not mismatches, mismatches[:10]
    assert ValueError in theirs  # the sweep reaches transformers' aspect-ratio limit


def test_smart_resize_errors():
    with pytest.raises(ValueError, match="aspect ratio must be smaller than 200"):
        smart_resize(10, 2001, 28, 3136, 12845056)
    with pytest.raises(ValueError, match="at least one pixel"):  # transformers divides by zero here
        smart_resize(0, 50, 28, 3136, 12845056)


@pytest.mark.parametrize("budget", ["qwen2.5-vl", "qwen3-vl", "lowered"])
def test_image_token_count_equals_transformers(budget):
    """``num_image_tokens`` against the image processor's ``get_number_of_image_patches`` with per-call limits."""
    patch_size, merge_size, min_pixels, max_pixels = BUDGETS[budget]
    processor = pil_image_processor(patch_size=patch_size, merge_size=merge_size)
    kwargs = {"size": {"shortest_edge": min_pixels, "longest_edge": max_pixels}}
    sizes = [s for s in image_sizes(patch_size * merge_size, seed=1) if max(s) / min(s) <= 200][::6]
    for height, width in sizes:
        expected = processor.get_number_of_image_patches(height, width, kwargs) // merge_size**2
        limits = dict(patch_size=patch_size, merge_size=merge_size, min_pixels=min_pixels, max_pixels=max_pixels)
        assert num_image_tokens(height, width, **limits) == expected, (height, width)
        grid = image_grid(height, width, **limits)
        assert grid.t == 1 and grid.h * grid.w // merge_size**2 == expected


@pytest.mark.parametrize("budget", ["qwen2-vl", "qwen2.5-vl", "qwen3-vl", "lowered"])
def test_largest_image_has_the_most_tokens(budget):
    """No image in the sweep (nor any of its transposes) gets more tokens than ``largest_image_size``'s."""
    patch_size, merge_size, min_pixels, max_pixels = BUDGETS[budget]
    factor = patch_size * merge_size
    height, width = largest_image_size(
        patch_size=patch_size, merge_size=merge_size, min_pixels=min_pixels, max_pixels=max_pixels
    )
    assert hf_smart_resize(height, width, factor, min_pixels, max_pixels) == (height, width)  # a fixed point
    best = height * width // factor**2
    # near the square root of the budget, and at the aspect-ratio limit, for every short side
    units = max_pixels // factor**2
    near = [(i * factor + d, (units // i) * factor + e) for i in range(1, math.isqrt(units) + 1) for d in (-1, 0, 7)
            for e in (0, 1, -13)]  # fmt: skip
    extreme = [(h, 200 * h) for h in range(1, 400, 3)]
    sizes = [s for s in image_sizes(factor, seed=2) + near + extreme if min(s) > 0 and max(s) / min(s) <= 200]
    counts = [math.prod(hf_smart_resize(h, w, factor, min_pixels, max_pixels)) // factor**2 for h, w in sizes]
    assert max(counts) == best
    if budget == "qwen2-vl":  # not the square vLLM uses: 32 x 40 tokens > 35 x 35
        assert best == 1280 and (height, width) == (32 * 28, 40 * 28)


def test_largest_image_exhaustively_on_a_small_grid():
    """With 4-pixel units every image up to 40 pixels tall, at every aspect ratio, is checked."""
    for max_pixels in (3200, 3300, 16 * 1283):
        height, width = largest_image_size(patch_size=2, merge_size=2, min_pixels=64, max_pixels=max_pixels)
        best = height * width // 16
        worst = max(
            math.prod(hf_smart_resize(h, w, 4, 64, max_pixels)) // 16
            for h in range(1, 41)
            for w in range(h, 200 * h + 1)
        )
        assert worst == best, max_pixels


def test_largest_image_refuses_budgets_it_cannot_bound():
    with pytest.raises(ValueError, match="extreme aspect ratio"):
        largest_image_size(patch_size=14, merge_size=2, min_pixels=784, max_pixels=4 * 784)
    # a band this tight lets transformers upscale a 10 x 1380 image past max_pixels: 2 x 143 units > 205
    patch_size, merge_size, min_pixels, max_pixels = BUDGETS["band"]
    assert math.prod(hf_smart_resize(10, 1380, 32, min_pixels, max_pixels)) > max_pixels
    with pytest.raises(ValueError, match="too close"):
        largest_image_size(patch_size=patch_size, merge_size=merge_size, min_pixels=min_pixels, max_pixels=max_pixels)


def test_smart_resize_frames_equals_transformers():
    """Qwen3-VL's video ``smart_resize`` (the budget over all frames) for frame counts 2..40 and odd sizes."""
    rng = np.random.default_rng(3)
    sizes = [(1, 1), (3, 5), (31, 33), (32, 32), (16, 3000), (3000, 16), (1, 199), (2, 500), (720, 1280), (1080, 1920)]
    sizes += [tuple(int(x) for x in s) for s in rng.integers(1, 2000, (60, 2))]
    for min_pixels, max_pixels in ((128 * 32 * 32, 32 * 32 * 768), (4096, 25165824), (4096, 200_000)):
        for num_frames in (2, 3, 4, 5, 9, 16, 40):
            for height, width in sizes:
                args = (num_frames, height, width, 2, 32, min_pixels, max_pixels)
                assert outcome(smart_resize_frames, *args) == outcome(hf_smart_resize_frames, *args), args
    with pytest.raises(ValueError, match="at least temporal_patch_size=2 frames"):
        smart_resize_frames(1, 100, 100, 2, 32, 4096, 25165824)


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen3_vl"])
def test_video_token_count_equals_transformers(family):
    """``num_video_tokens`` against ``get_num_of_video_patches`` (frame counts are after sampling)."""
    config = QwenVideoConfig.defaults(family)
    processor = video_processor(family)
    for num_frames in (2, 3, 4, 7, 16, 33):
        for height, width in ((28, 28), (90, 160), (360, 640), (720, 1280), (17, 3000), (1080, 1920)):
            expected = processor.get_num_of_video_patches(num_frames, height, width) // config.merge_size**2
            assert num_video_tokens(num_frames, height, width, config) == expected, (num_frames, height, width)
