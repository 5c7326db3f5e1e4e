"""The placeholder -> feature index map and the tile packing, from the geometry alone."""

from __future__ import annotations

import numpy as np
import pytest

from mmjax.processing.anyres import AnyresGeometry
from mmjax.processing.anyres_layout import NEWLINE, TEXT, bucket_for, image_feature_rows, pack_images, tile_buckets

TINY = AnyresGeometry(pinpoints=((30, 60), (60, 30), (60, 60), (90, 30), (30, 90)), tile_size=30, patch_size=6)


def test_a_small_map_by_hand():
    """A 2x1 grid (tiles of 2x2 features): base tile, then a 4-row, 2-col grid cut to its middle 2 rows."""
    geometry = AnyresGeometry(pinpoints=((8, 4),), tile_size=4, patch_size=2)
    rows = image_feature_rows(geometry, height=10, width=10)  # square image in a tall grid: rows 1..2 kept
    n = NEWLINE
    assert rows.tolist() == [0, 1, 2, 3, 6, 7, n, 8, 9, n]


@pytest.mark.parametrize("size", [(17, 45), (60, 31), (100, 100), (1, 97), (97, 1), (8000, 3), (55, 176)])
def test_map_has_the_geometry_count_and_reads_each_kept_feature_once(size):
    rows = image_feature_rows(TINY, *size)
    grid = TINY.unpadded_grid(*size)
    assert len(rows) == TINY.num_image_tokens(*size)
    features = rows[rows >= 0]
    assert (rows == NEWLINE).sum() == grid.rows and len(set(features.tolist())) == len(features)
    assert features.max() < TINY.num_tiles(*size) * TINY.base_tokens


def test_packing_offsets_each_image_by_its_first_tile():
    sizes = [(17, 45), (100, 100)]  # 3 and 5 tiles
    pixel_values = np.arange(2 * 5 * 3 * 30 * 30, dtype=np.float32).reshape(2, 5, 3, 30, 30)
    packed = pack_images(TINY, pixel_values, sizes, tile_buckets(10))
    first, second = image_feature_rows(TINY, *sizes[0]), image_feature_rows(TINY, *sizes[1])
    rows = np.asarray(packed.placeholder_rows)
    np.testing.assert_array_equal(rows[: len(first)], first)
    np.testing.assert_array_equal(rows[len(first) : len(first) + len(second)],
                                  np.where(second >= 0, second + 3 * TINY.base_tokens, second))  # fmt: skip
    assert (rows[len(first) + len(second) :] == TEXT).all() and packed.num_placeholders == len(first) + len(second)
    np.testing.assert_array_equal(packed.pixel_values[3:8], pixel_values[1])


def test_buckets():
    assert tile_buckets(30) == (1, 2, 3, 4, 6, 8, 12, 16, 24, 30)
    assert [bucket_for(n, tile_buckets(30)) for n in (1, 5, 13, 25)] == [1, 6, 16, 30]
    with pytest.raises(ValueError, match="31 tiles exceed the largest tile bucket 30"):
        bucket_for(31, tile_buckets(30))
