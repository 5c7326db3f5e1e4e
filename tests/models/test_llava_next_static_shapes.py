"""Static shapes: real tiles re-laid from transformers' layout, bucketed tower work, one compile per bucket."""

from __future__ import annotations

from unittest import mock

import numpy as np
from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

from mmjax.models.common.clip import CLIPVisionTower
from mmjax.models.llava_next import forward
from mmjax.processing.anyres_layout import bucket_for, pack_images, tile_buckets
from tiny_llava_next import SIX_SIZES, hf_pixels, images, loaded, our_logits, prompt_rows

NAME = "vicuna"


def test_packed_tiles_are_transformers_tiles_relaid():
    """Image n's tiles sit, in transformers' order, right after image n-1's; the rest of the bucket is masked."""
    model, hf_config = loaded(NAME)
    geometry = model.config.geometry
    pixel_values, image_sizes = hf_pixels(NAME, images(SIX_SIZES))
    packed = pack_images(geometry, pixel_values, image_sizes, tile_buckets(6 * geometry.max_tiles))
    tiles, start = np.asarray(packed.pixel_values), 0
    pins = [list(p) for p in hf_config.image_grid_pinpoints]
    for n, (h, w) in enumerate(SIX_SIZES):
        count = geometry.num_tiles(h, w)
        assert count == image_size_to_num_patches((h, w), pins, geometry.tile_size)  # transformers' model split
        np.testing.assert_array_equal(tiles[start : start + count], pixel_values[n, :count])
        assert not pixel_values[n, count:].any()  # transformers' batch padding holds nothing more
        start += count
    assert packed.tile_valid.sum() == start and not tiles[start:].any()
    assert len(tiles) == bucket_for(start, tile_buckets(6 * geometry.max_tiles))


def test_vision_tower_sees_only_the_bucket_of_real_tiles():
    """15 real tiles run as a bucket of 16, where the per-image layout (and transformers' batch) has 20 slots."""
    model, hf_config = loaded(NAME)
    geometry = model.config.geometry
    sizes = [(17, 45), (100, 100), (7, 90), (20, 45)]
    pixel_values, image_sizes = hf_pixels(NAME, images(sizes))
    packed = pack_images(geometry, pixel_values, image_sizes, tile_buckets(len(sizes) * geometry.max_tiles))
    counts = [geometry.num_image_tokens(h, w) for h, w in sizes]
    input_ids = prompt_rows(hf_config.image_token_id, [counts])
    seen = []
    original = CLIPVisionTower.__call__

    def recording(self, pixel_values, **kwargs):
        seen.append(np.asarray(pixel_values))
        return original(self, pixel_values, **kwargs)

    with mock.patch.object(CLIPVisionTower, "__call__", recording):
        model(input_ids, np.zeros_like(input_ids), packed.pixel_values, tile_valid=packed.tile_valid,
              placeholder_rows=packed.placeholder_rows)  # fmt: skip
    real = sum(geometry.num_tiles(h, w) for h, w in sizes)
    assert [len(s) for s in seen] == [16] and real == 15 and pixel_values.shape[:2] == (4, 5)
    np.testing.assert_array_equal(seen[0][:real], np.concatenate([pixel_values[n, : geometry.num_tiles(*s)]
                                                                   for n, s in enumerate(sizes)]))  # fmt: skip


def test_batches_of_different_sizes_compile_once_per_bucket():
    """Ten sizes in five batches of two images fall into three tile buckets: three compilations."""
    model, hf_config = loaded(NAME)
    geometry = model.config.geometry
    buckets = tile_buckets(2 * geometry.max_tiles)  # (1, 2, 3, 4, 6, 8, 10)
    batches = [
        [(17, 45), (20, 45)], [(45, 20), (16, 44)],  # 3 + 3 tiles -> bucket 6
        [(7, 90), (91, 12)],  # 4 + 4 -> 8
        [(60, 31), (30, 61)], [(100, 100), (33, 99)],  # 5 + 4 -> 10
    ]  # fmt: skip
    length = 2 * geometry.max_image_tokens() + 20  # one token-length bucket for every batch
    before, used = forward._cache_size(), set()
    for sizes in batches:
        pixel_values, image_sizes = hf_pixels(NAME, images(sizes))
        packed = pack_images(geometry, pixel_values, image_sizes, buckets)
        counts = [geometry.num_image_tokens(h, w) for h, w in sizes]
        ids = prompt_rows(hf_config.image_token_id, [counts])
        ids = np.concatenate([ids, np.full((1, length - ids.shape[1]), 7, np.int32)], axis=1)
        logits = our_logits(model, ids, packed)
        assert np.isfinite(logits).all()
        used.add(len(packed.pixel_values))
    assert used == {6, 8, 10}
    assert forward._cache_size() - before == len(used)
