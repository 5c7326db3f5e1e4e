"""The anyres token count equals transformers' processor and model for every image size.

transformers counts in two places: the processor (``_get_number_of_features``,
which sizes the placeholder run) and the model (``get_anyres_image_grid_shape``
and ``unpad_image`` in ``pack_image_features``, which sizes the features that
fill it). Both are called here on sizes from 1 to 8000 pixels a side; the
model side runs ``unpad_image`` on an empty ``(0, rows, cols)`` array, which has
the feature grid's shape and no data.
"""

from __future__ import annotations

import numpy as np
import pytest
from transformers import LlavaNextImageProcessorPil, LlavaNextProcessor
from transformers.image_processing_utils import select_best_resolution as hf_select_best_resolution
from transformers.models.llava_next.modeling_llava_next import get_anyres_image_grid_shape, unpad_image

from mmjax.processing.anyres import AnyresGeometry
from mmjax.testing.tokenizer import make_tiny_tokenizer

LLAVA_NEXT_PINPOINTS = ((336, 672), (672, 336), (672, 672), (1008, 336), (336, 1008))
GEOMETRIES = {
    "llava-v1.6": AnyresGeometry(pinpoints=LLAVA_NEXT_PINPOINTS, tile_size=336, patch_size=14),
    # the tiny test checkpoints' geometry, and an irregular one with a 3x3 grid
    "tiny": AnyresGeometry(pinpoints=((30, 60), (60, 30), (60, 60), (90, 30), (30, 90)), tile_size=30, patch_size=6),
    "odd": AnyresGeometry(pinpoints=((42, 126), (84, 42), (126, 126), (42, 42)), tile_size=42, patch_size=7),
}

#: (height, width) where float rounding decides: without transformers' round(x, 7) the
#: resized side would truncate (55x176: 14.999999999999998 -> 14), and where exact
#: rational arithmetic picks another pinpoint than transformers' float scale (567x1133).
ROUNDING_SIZES = [(55, 176), (88, 99), (47, 1128), (94, 1128), (103, 309), (567, 1133), (1133, 567), (600, 1199)]
EXTREME_SIZES = [(1, 1), (1, 8000), (8000, 1), (2, 7999), (7999, 3), (8000, 8000), (336, 672), (672, 672)]


def sweep_sizes(seed: int = 0) -> list[tuple[int, int]]:
    """10,000 uniform sizes in [1, 8000]^2, 2,000 log-uniform (extreme aspect ratios), and the tables above."""
    rng = np.random.default_rng(seed)
    uniform = rng.integers(1, 8001, (10_000, 2))
    log_uniform = np.exp(rng.uniform(0, np.log(8000), (2_000, 2))).astype(int).clip(1, 8000)
    sizes = [tuple(map(int, s)) for s in np.concatenate([uniform, log_uniform])]
    return sizes + ROUNDING_SIZES + EXTREME_SIZES


def hf_processor(geometry: AnyresGeometry) -> LlavaNextProcessor:
    tile = geometry.tile_size
    image_processor = LlavaNextImageProcessorPil(
        image_grid_pinpoints=[list(p) for p in geometry.pinpoints],
        size={"shortest_edge": tile}, crop_size={"height": tile, "width": tile},
    )  # fmt: skip
    return LlavaNextProcessor(
        image_processor=image_processor, tokenizer=make_tiny_tokenizer(), patch_size=geometry.patch_size,
        vision_feature_select_strategy="default", num_additional_image_tokens=1,
    )  # fmt: skip


def processor_count(processor: LlavaNextProcessor, geometry: AnyresGeometry, height: int, width: int) -> int:
    tile = geometry.tile_size
    return processor._get_number_of_features(height, width, tile, tile) - 1  # "default" drops CLS


def model_count(geometry: AnyresGeometry, height: int, width: int) -> int:
    pins, p = [list(pin) for pin in geometry.pinpoints], geometry.patches_per_side
    tile_rows, tile_cols = get_anyres_image_grid_shape((height, width), pins, geometry.tile_size)
    kept = unpad_image(np.empty((0, tile_rows * p, tile_cols * p)), (height, width))
    rows, cols = kept.shape[1:]
    return p * p + rows * (cols + 1)  # base tile, then each kept row and its newline


@pytest.mark.parametrize("name", list(GEOMETRIES))
def test_token_count_equals_transformers_processor_and_model(name):
    geometry, processor = GEOMETRIES[name], hf_processor(GEOMETRIES[name])
    mismatches = []
    for height, width in sweep_sizes():
        ours = geometry.num_image_tokens(height, width)
        theirs = (processor_count(processor, geometry, height, width), model_count(geometry, height, width))
        if theirs != (ours, ours):
            mismatches.append(((height, width), ours, theirs))
    assert not mismatches, f"{len(mismatches)} sizes differ, e.g. (size, ours, (processor, model)): {mismatches[:5]}"


@pytest.mark.parametrize("name", list(GEOMETRIES))
def test_tile_grid_equals_transformers(name):
    geometry = GEOMETRIES[name]
    pins = [list(p) for p in geometry.pinpoints]
    for height, width in sweep_sizes(seed=1)[:3000] + ROUNDING_SIZES:
        assert geometry.best_resolution(height, width) == tuple(hf_select_best_resolution((height, width), pins))
        tiles = get_anyres_image_grid_shape((height, width), pins, geometry.tile_size)
        assert geometry.tile_grid(height, width) == tuple(tiles)


@pytest.mark.parametrize("name", list(GEOMETRIES))
def test_max_image_tokens_bounds_every_size_and_is_reached(name):
    geometry = GEOMETRIES[name]
    bound = geometry.max_image_tokens()
    counts = [geometry.num_image_tokens(h, w) for h, w in sweep_sizes()]
    assert max(counts) <= bound
    assert geometry.num_image_tokens(*geometry.largest_image_size()) == bound


def test_llava_v16_figures():
    """The published numbers: 2928 tokens at most (a 672x672 image), 5 tiles at most."""
    geometry = GEOMETRIES["llava-v1.6"]
    assert geometry.max_image_tokens() == 2928 and geometry.largest_image_size() == (672, 672)
    assert geometry.max_tiles == 5 and geometry.base_tokens == 576


@pytest.mark.parametrize("height, width", [(0, 5), (5, 0), (-1, 3)])
def test_empty_image_is_refused(height, width):
    with pytest.raises(ValueError, match="at least 1x1"):
        GEOMETRIES["tiny"].num_image_tokens(height, width)


def test_pinpoints_must_be_tile_multiples():
    with pytest.raises(ValueError, match="multiple of the tile size"):
        AnyresGeometry(pinpoints=((30, 45),), tile_size=30, patch_size=6)
