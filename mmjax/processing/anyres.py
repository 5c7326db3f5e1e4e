"""LLaVA-NeXT "anyres" geometry: from an image's size to its tiles and its token count.

The one place mmjax computes how many placeholder tokens an image becomes; the
input processor, the max-token count, the dummy data and the feature index
map (``anyres_layout``) all call it, so they cannot drift apart.

An image of ``height x width`` pixels is resized into the best of the
``pinpoints`` (``select_best_resolution``), padded to it and cut into
``tile_size`` tiles; a downscaled copy of the whole image is the base tile.
Each tile gives ``(tile_size // patch_size) ** 2`` features. The tiles'
features form one grid, the rows (or columns) that only saw padding are cut
off (``unpadded_grid``), and one ``image_newline`` closes every row:

    tokens = base_features + rows * cols + rows

Sizes are integers in, integers out. Where transformers computes in floating
point (the scale in ``select_best_resolution``, ``round(x, 7)`` in
``unpad_image``) we evaluate the very same float expressions, because the
model's feature count is what must fill the placeholders: exact rational
arithmetic would disagree for some sizes (see ``tests/processing``).
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple, Sequence

Size = tuple[int, int]  # (height, width), transformers' order for pinpoints and image_sizes


def select_best_resolution(height: int, width: int, pinpoints: Sequence[Size]) -> Size:
    """The pinpoint that keeps the most of the image, then wastes the fewest pixels.

    Float for float the expression of transformers' ``select_best_resolution``:
    ``int(width * scale)`` truncates products such as ``49 * (336 / 49)`` to
    335, and the choice between pinpoints can hinge on that pixel.
    """
    best, best_effective, best_wasted = None, 0, float("inf")
    for pin_h, pin_w in pinpoints:
        scale = min(pin_w / width, pin_h / height)
        effective = min(int(width * scale) * int(height * scale), width * height)
        wasted = pin_w * pin_h - effective
        if effective > best_effective or (effective == best_effective and wasted < best_wasted):
            best, best_effective, best_wasted = (pin_h, pin_w), effective, wasted
    if best is None:
        raise ValueError(f"no pinpoint fits a {height}x{width} image: pinpoints={list(pinpoints)}")
    return best


def _resized_side(side: int, target: int, reference: int) -> int:
    """``int(round(side * (target / reference), 7))``, as transformers' ``unpad_image`` computes it.

    The rounding to 7 decimals absorbs float error when the exact quotient is an
    integer (``12.999999999998`` -> 13); we keep the float expression so that
    the result is transformers' for every size, not only for small ones.
    """
    return int(round(side * (target / reference), 7))


class UnpaddedGrid(NamedTuple):
    """The window of the tiles' feature grid that saw image, not padding (in patches)."""

    top: int
    left: int
    rows: int
    cols: int


@dataclasses.dataclass(frozen=True, kw_only=True)
class AnyresGeometry:
    """The integers that fix an image's tiles and tokens; hashable, so a static jit argument.

    Attributes:
      pinpoints: candidate resolutions ``(height, width)``, multiples of ``tile_size``.
      tile_size: side of a tile, the vision tower's ``image_size`` (336 for LLaVA-NeXT).
      patch_size: side of a vision patch (14); one feature per patch.
    """

    pinpoints: tuple[Size, ...]
    tile_size: int
    patch_size: int

    def __post_init__(self):
        if not self.pinpoints:
            raise ValueError("image_grid_pinpoints is empty")
        if self.tile_size % self.patch_size:
            raise ValueError(f"tile size {self.tile_size} is not a multiple of patch size {self.patch_size}")
        for pin in self.pinpoints:
            if len(pin) != 2 or min(pin) < self.tile_size or any(side % self.tile_size for side in pin):
                raise ValueError(f"pinpoint {pin} is not a (height, width) multiple of the tile size {self.tile_size}")

    @classmethod
    def from_hf(cls, hf_config) -> "AnyresGeometry":
        """From a transformers ``LlavaNextConfig`` (the model's, not the processor's, pinpoints)."""
        vision = hf_config.vision_config
        pins = tuple((int(h), int(w)) for h, w in hf_config.image_grid_pinpoints)
        return cls(pinpoints=pins, tile_size=vision.image_size, patch_size=vision.patch_size)

    @property
    def patches_per_side(self) -> int:
        """Features along one side of a tile (24 for 336/14)."""
        return self.tile_size // self.patch_size

    @property
    def base_tokens(self) -> int:
        """Features of one tile, hence of the base image (576 for 336/14)."""
        return self.patches_per_side**2

    @property
    def max_tiles(self) -> int:
        """Most tiles one image can need, base tile included (5 for LLaVA-NeXT)."""
        return 1 + max((h // self.tile_size) * (w // self.tile_size) for h, w in self.pinpoints)

    def best_resolution(self, height: int, width: int) -> Size:
        """The pinpoint an image of this size is resized and padded into."""
        _check_size(height, width)
        return select_best_resolution(height, width, self.pinpoints)

    def tile_grid(self, height: int, width: int) -> Size:
        """``(rows, cols)`` of tiles cut from the padded best resolution."""
        best_h, best_w = self.best_resolution(height, width)
        return best_h // self.tile_size, best_w // self.tile_size

    def num_tiles(self, height: int, width: int) -> int:
        """Tiles the vision tower sees for this image: the grid plus the base image."""
        rows, cols = self.tile_grid(height, width)
        return rows * cols + 1

    def unpadded_grid(self, height: int, width: int) -> UnpaddedGrid:
        """The part of the ``(rows * p, cols * p)`` feature grid kept by ``unpad_image``.

        transformers compares aspect ratios and removes ``padding`` rows (or
        columns) from both ends, with ``padding = (current - new) // 2``; an odd
        remainder stays at the far end, which is why the kept height is
        ``current - 2 * padding`` and not ``new``.
        """
        tile_rows, tile_cols = self.tile_grid(height, width)
        rows, cols = tile_rows * self.patches_per_side, tile_cols * self.patches_per_side
        if width / height > cols / rows:  # wider than the grid: padding above and below
            padding = (rows - _resized_side(height, cols, width)) // 2
            return UnpaddedGrid(top=padding, left=0, rows=rows - 2 * padding, cols=cols)
        padding = (cols - _resized_side(width, rows, height)) // 2
        return UnpaddedGrid(top=0, left=padding, rows=rows, cols=cols - 2 * padding)

    def num_image_tokens(self, height: int, width: int) -> int:
        """Placeholder tokens for one image: base features, kept grid features, one newline per row."""
        grid = self.unpadded_grid(height, width)
        return self.base_tokens + grid.rows * grid.cols + grid.rows

    def largest_image_size(self) -> Size:
        """An image size with the most tokens: the size of the pinpoint with the largest feature grid.

        Why this is the maximum: an image that lands in pinpoint ``(height, width)``
        keeps at most the whole ``(rows, cols)`` feature grid, so it has at most
        ``base + rows * cols + rows`` tokens; an image of exactly ``height x width`` pixels lands
        in ``(height, width)`` (no other pinpoint keeps all its pixels with less waste)
        and loses nothing to unpadding, so it reaches that bound.
        """
        return max(self.pinpoints, key=lambda pin: self.num_image_tokens(*pin))

    def max_image_tokens(self) -> int:
        """The most placeholder tokens any image becomes (2928 for LLaVA-NeXT's pinpoints)."""
        return self.num_image_tokens(*self.largest_image_size())


def _check_size(height: int, width: int) -> None:
    if height < 1 or width < 1:
        raise ValueError(f"image size must be at least 1x1, got {height}x{width} (height x width)")
