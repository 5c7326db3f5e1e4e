"""Static-shape anyres inputs: real tiles packed into a bucket, and a placeholder -> feature index map.

Every image has its own number of tiles and tokens. ``pack_images`` turns a
list of images (host, numpy) into arrays whose shapes come from a small, fixed
set, so ``jit`` compiles once per bucket and never per image size:

- ``tiles``: the real tiles of every image, one after the other, then zero
  tiles up to the next *tile bucket*, with a validity mask ``tile_valid``. The
  vision tower runs on the bucket, never on the per-image padding that
  transformers' processor adds (``max_tiles`` slots per image).
- ``placeholder_rows``: for the k-th placeholder token (in row-major order of
  the step's ``input_ids``), the row of the tile-feature table that fills it
  (``tile * P + patch``), or ``NEWLINE`` for an ``image_newline``; ``TEXT``
  past the last placeholder. The model finds ``k`` with a cumulative sum over
  the placeholder mask, as LLaVA-1.5's merge does, and gathers.

Both follow from ``AnyresGeometry``; nothing here recounts tokens.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import numpy as np

from mmjax.processing.anyres import AnyresGeometry
from mmjax.types import ArrayLike, Bool, Float, Int

TEXT = -1  # no feature: the position keeps its token embedding
NEWLINE = -2  # the position takes the image_newline embedding


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class AnyresImages:
    """The images of one step, in bucketed shapes (a PyTree of arrays: numpy from
    ``pack_images``, device arrays once placed).

    Attributes:
      pixel_values: f32 ``[I, C, Y, X]``; the real tiles of all images, then zero
        tiles. ``I`` is a tile bucket.
      tile_valid: bool ``[I]``; False for the zero tiles.
      placeholder_rows: i32 ``[M]``, ``M = I * (P + side)``; the feature row (``< I * P``),
        ``NEWLINE`` or ``TEXT`` for each placeholder in order (``P`` features
        per tile, ``side = geometry.patches_per_side`` newlines at most per tile:
        an image of ``n`` tiles has at most ``n * (P + side)`` tokens).
    """

    pixel_values: Float[ArrayLike, "I C Y X"]
    tile_valid: Bool[ArrayLike, "I"]
    placeholder_rows: Int[ArrayLike, "M"]

    @property
    def num_placeholders(self) -> int:
        """Placeholder tokens these images fill (host arrays only)."""
        return int((np.asarray(self.placeholder_rows) != TEXT).sum())


def tile_buckets(max_total_tiles: int) -> tuple[int, ...]:
    """1, 2, 3, 4, 6, 8, 12, 16, ... below ``max_total_tiles``, then ``max_total_tiles``.

    Powers of two and their halfway points: the tower does at most 1.5x the
    work of the real tiles, with about ``2 log2(max_total_tiles)`` programs to compile.
    """
    if max_total_tiles < 1:
        raise ValueError(f"max_total_tiles must be >= 1, got {max_total_tiles}")
    powers = [1 << k for k in range(max_total_tiles.bit_length())]
    steps = set(powers) | {3 * p for p in powers}
    return tuple(sorted(b for b in steps if b < max_total_tiles)) + (max_total_tiles,)


def bucket_for(count: int, buckets: Sequence[int]) -> int:
    """The smallest bucket that holds ``count``."""
    fitting = [b for b in buckets if b >= count]
    if not fitting:
        raise ValueError(f"{count} tiles exceed the largest tile bucket {max(buckets)}; raise the image limit")
    return min(fitting)


def image_feature_rows(geometry: AnyresGeometry, height: int, width: int) -> Int[np.ndarray, "image_tokens"]:
    """Where each of one image's placeholder tokens reads its feature, in the image's own tiles.

    Returns:
      i32 ``[geometry.num_image_tokens(height, width)]``: ``tile * P + patch``
      with tile 0 the base image and tiles ``1..`` the grid in row-major order,
      or ``NEWLINE``. The order is transformers' ``pack_image_features``: the
      base tile's features, then each kept row of the unpadded grid and its newline.
    """
    p, per_tile = geometry.patches_per_side, geometry.base_tokens
    _, tile_cols = geometry.tile_grid(height, width)
    grid = geometry.unpadded_grid(height, width)
    r = np.arange(grid.top, grid.top + grid.rows)[:, None]  # rows of the full feature grid
    c = np.arange(grid.left, grid.left + grid.cols)[None, :]
    kept = (1 + (r // p) * tile_cols + c // p) * per_tile + (r % p) * p + c % p
    with_newlines = np.concatenate([kept, np.full((grid.rows, 1), NEWLINE)], axis=1)
    return np.concatenate([np.arange(per_tile), with_newlines.ravel()]).astype(np.int32)


def pack_images(
    geometry: AnyresGeometry,
    pixel_values: Float[np.ndarray, "num_images max_tiles C Y X"],
    image_sizes: Sequence[Sequence[int]],
    buckets: Sequence[int],
) -> AnyresImages:
    """The images of one step (all prompts, in placeholder order) as ``AnyresImages``.

    Args:
      pixel_values: transformers' processor layout: each image's tiles (base
        first), then zero padding (``max_tiles >=`` its tile count).
      image_sizes: ``(height, width)`` of each original image.
      buckets: the allowed tile counts (``tile_buckets``).
    """
    sizes = [(int(h), int(w)) for h, w in image_sizes]
    if len(sizes) != len(pixel_values):
        raise ValueError(f"{len(pixel_values)} images of pixel values but {len(sizes)} image sizes")
    counts = [geometry.num_tiles(h, w) for h, w in sizes]
    bucket = bucket_for(sum(counts), buckets)
    tiles = np.zeros((bucket, *np.shape(pixel_values)[2:]), np.float32)
    rows = np.full(bucket * (geometry.base_tokens + geometry.patches_per_side), TEXT, np.int32)
    first_tile = first_row = 0
    for n, ((h, w), count) in enumerate(zip(sizes, counts)):
        if np.shape(pixel_values[n])[0] < count:
            raise ValueError(f"image {n} ({h}x{w}) needs {count} tiles but has {np.shape(pixel_values[n])[0]}")
        tiles[first_tile : first_tile + count] = pixel_values[n][:count]
        local = image_feature_rows(geometry, h, w)
        offset = first_tile * geometry.base_tokens
        rows[first_row : first_row + len(local)] = np.where(local >= 0, local + offset, local)
        first_tile, first_row = first_tile + count, first_row + len(local)
    return AnyresImages(pixel_values=tiles, tile_valid=np.arange(bucket) < first_tile, placeholder_rows=rows)
