"""Gemma 3's pan and scan: where transformers cuts an image into crops (``Gemma3ImageProcessor.pan_and_scan``).

An image whose long side is at least ``min_ratio_to_activate`` times its short side is cut along its long
side into ``n`` crops of ``ceil(long / n)`` pixels (the last one shorter when ``n`` does not divide it):
``n`` is the ratio rounded half up, at most ``long // min_crop_size``, then clamped to
``[2, max_num_crops]``; no crops at all if a crop's short side would be under ``min_crop_size``. The crops
are taken from the source image (before any resize), top to bottom or left to right.
"""

from __future__ import annotations

import math
from typing import NamedTuple

from mmjax.processing.gemma3_config import PanAndScan


class CropBox(NamedTuple):
    """One crop of the source image: rows ``[top, top + height)``, columns ``[left, left + width)`` (clipped)."""

    top: int
    left: int
    height: int
    width: int


def crop_grid(height: int, width: int, settings: PanAndScan) -> tuple[int, int]:
    """``(rows, columns)`` of crops of a ``height x width`` image; ``(0, 0)`` when it is not cut."""
    if not settings.enabled:
        return 0, 0
    long, short = max(height, width), min(height, width)
    if long / short < settings.min_ratio_to_activate:
        return 0, 0
    count = int(math.floor(long / short + 0.5))  # half rounds up
    count = min(int(math.floor(long / settings.min_crop_size)), count)
    count = min(settings.max_num_crops, max(2, count))
    rows, columns = (1, count) if width >= height else (count, 1)
    if min(math.ceil(width / columns), math.ceil(height / rows)) < settings.min_crop_size:
        return 0, 0
    return rows, columns


def crop_boxes(height: int, width: int, settings: PanAndScan) -> list[CropBox]:
    """The crops of a ``height x width`` image, row by row (transformers' order); empty when it is not cut.

    Raises:
      ValueError: a last crop would be empty (only with a ``min_crop_size`` of a pixel or two).
    """
    rows, columns = crop_grid(height, width, settings)
    if not rows:
        return []
    crop_height, crop_width = math.ceil(height / rows), math.ceil(width / columns)
    if (rows - 1) * crop_height >= height or (columns - 1) * crop_width >= width:  # transformers fails on it too
        raise ValueError(f"pan and scan would cut a {height}x{width} image into {rows}x{columns} crops of "
                         f"{crop_height}x{crop_width}, the last one empty; raise pan_and_scan_min_crop_size")
    return [
        CropBox(top, left, min(crop_height, height - top), min(crop_width, width - left))
        for top in range(0, crop_height * rows, crop_height)
        for left in range(0, crop_width * columns, crop_width)
    ]


def num_crops(height: int, width: int, settings: PanAndScan) -> int:
    """How many crops a ``height x width`` image is cut into (0: none)."""
    rows, columns = crop_grid(height, width, settings)
    return rows * columns
