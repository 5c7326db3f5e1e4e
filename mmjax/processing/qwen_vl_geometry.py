"""Qwen2-VL-family geometry: from an image's or a video's size to its resized size, patch grid and token count.

The one place mmjax computes how many placeholder tokens a Qwen2-VL,
Qwen2.5-VL or Qwen3-VL image or video becomes. An image of ``height x width``
pixels is resized to ``smart_resize``'s size (both sides multiples of
``factor = patch_size * merge_size``, about the same aspect ratio, the area
within ``[min_pixels, max_pixels]``), cut into ``patch_size`` patches, and
every ``merge_size x merge_size`` patches become one token:

    grid = (t, resized_height / patch_size, resized_width / patch_size)
    tokens = t * grid_h * grid_w / merge_size**2

with ``t = 1`` for an image and ``ceil(frames / temporal_patch_size)`` for a
video. Sizes are integers in, integers out, computed with the very float
expressions transformers uses (Python's ``round`` rounds halves to even:
``round(42 / 28) == 2`` but ``round(70 / 28) == 2`` too), so that every size
gives transformers' answer, not a neighbour's.
"""

from __future__ import annotations

import math
from typing import NamedTuple

#: transformers refuses sizes whose longer side is more than this many times the shorter one.
MAX_ASPECT_RATIO = 200


class Grid(NamedTuple):
    """A patch grid ``(t, h, w)``: temporal patches, patch rows, patch columns (``image_grid_thw``)."""

    t: int
    h: int
    w: int


def _check_aspect_ratio(height: int, width: int) -> None:
    if min(height, width) <= 0:
        raise ValueError(f"an image needs at least one pixel per side, got {height}x{width} (height x width)")
    if max(height, width) / min(height, width) > MAX_ASPECT_RATIO:
        raise ValueError(
            f"absolute aspect ratio must be smaller than {MAX_ASPECT_RATIO}, got "
            f"{max(height, width) / min(height, width)} for a {height}x{width} image (height x width)"
        )


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """The ``(height, width)`` transformers' Qwen2-VL image processor resizes a ``height x width`` image to.

    Both sides become multiples of ``factor``: rounded to the nearest multiple if
    the area stays within ``[min_pixels, max_pixels]``, else scaled by one common
    factor and floored (too big) or ceiled (too small). A side never drops below
    ``factor``. Raises ``ValueError`` for an aspect ratio over 200 (as transformers
    does) and for an empty side (where transformers divides by zero).
    """
    _check_aspect_ratio(height, width)
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def smart_resize_frames(
    num_frames: int, height: int, width: int, temporal_factor: int, factor: int, min_pixels: int, max_pixels: int
) -> tuple[int, int]:
    """Qwen3-VL's video variant of ``smart_resize``: the budget counts the pixels of all ``num_frames`` frames.

    Transformers' ``qwen3_vl.video_processing_qwen3_vl.smart_resize``: a side under
    ``factor`` first scales the frame up (truncating) until both sides reach it; the
    area compared with ``[min_pixels, max_pixels]`` is ``round(num_frames /
    temporal_factor) * temporal_factor * h_bar * w_bar``. Raises ``ValueError`` for
    fewer than ``temporal_factor`` frames, as transformers does.
    """
    if num_frames < temporal_factor:
        raise ValueError(
            f"a Qwen3-VL video needs at least temporal_patch_size={temporal_factor} frames after sampling, "
            f"got {num_frames}"
        )
    if min(height, width) <= 0:
        raise ValueError(f"a frame needs at least one pixel per side, got {height}x{width} (height x width)")
    if height < factor or width < factor:
        scale = max(factor / height, factor / width)
        height = int(height * scale)
        width = int(width * scale)
    _check_aspect_ratio(height, width)
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    t_bar = round(num_frames / temporal_factor) * temporal_factor
    if t_bar * h_bar * w_bar > max_pixels:
        beta = math.sqrt((num_frames * height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif t_bar * h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (num_frames * height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def image_grid(height: int, width: int, *, patch_size: int, merge_size: int, min_pixels: int, max_pixels: int) -> Grid:
    """The patch grid ``(1, h, w)`` of a ``height x width`` image (transformers' ``image_grid_thw`` row)."""
    resized_height, resized_width = smart_resize(height, width, patch_size * merge_size, min_pixels, max_pixels)
    return Grid(1, resized_height // patch_size, resized_width // patch_size)


def num_image_tokens(
    height: int, width: int, *, patch_size: int, merge_size: int, min_pixels: int, max_pixels: int
) -> int:
    """Placeholder tokens of a ``height x width`` image: ``grid_h * grid_w // merge_size**2``.

    A pure function of the size (no pixels), for the prompt's placeholders, the
    max-token count and the dummy data; equal to the length of the image's
    features and to transformers' ``image_grid_thw.prod() // merge_size**2``.
    """
    grid = image_grid(
        height, width, patch_size=patch_size, merge_size=merge_size, min_pixels=min_pixels, max_pixels=max_pixels
    )
    return grid.t * grid.h * grid.w // merge_size**2


def largest_image_size(*, patch_size: int, merge_size: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """A ``(height, width)`` with the most image tokens any image can get, for dummy data and max-token counts.

    Images whose sides round to multiples ``i * factor``, ``j * factor`` with area
    within the budget keep that size, so the most tokens any image gets is the
    largest ``i * j <= max_pixels // factor**2`` that a real image (aspect ratio at
    most 200) rounds to; ties go to the squarest. This is not always the square
    vLLM uses: Qwen2-VL's default ``max_pixels = 28 * 28 * 1280`` allows 32 x 40
    = 1280 tokens where the best square, 35 x 35, has 1225. The size returned is
    one such image (a fixed point of ``smart_resize`` whenever its aspect ratio
    allows). Raises ``ValueError`` where the bound does not hold: ``max_pixels <
    200 * factor**2`` (``smart_resize`` then lifts the short side of an extreme
    image to ``factor`` and can exceed the budget) or ``min_pixels`` so close to
    ``max_pixels`` that upscaling a small image could.
    """
    factor = patch_size * merge_size
    if max_pixels < MAX_ASPECT_RATIO * factor * factor:
        raise ValueError(
            f"max_pixels={max_pixels} < {MAX_ASPECT_RATIO} * factor**2 = {MAX_ASPECT_RATIO * factor * factor}: "
            "an image of extreme aspect ratio can then get more tokens than the budget allows"
        )
    budget = max_pixels // (factor * factor)
    best: tuple[int, int] | None = None
    best_tokens = 0
    for i in range(1, math.isqrt(budget) + 1):
        # the widest image whose height rounds to i: a width of 200 times the tallest such height
        widest = round(MAX_ASPECT_RATIO * (i * factor + factor // 2) / factor)
        for j in range(min(budget // i, widest), i - 1, -1):
            if i * j < best_tokens:
                break
            size = _image_rounding_to(i * factor, j * factor, factor, min_pixels, max_pixels)
            if size is not None:
                best, best_tokens = size, i * j
                break
    min_units = min_pixels / (factor * factor)
    upscaled_bound = min_units + math.sqrt(min_units / MAX_ASPECT_RATIO) + math.sqrt(MAX_ASPECT_RATIO * min_units) + 1
    if best is None or upscaled_bound > best_tokens:
        raise ValueError(
            f"min_pixels={min_pixels} is too close to max_pixels={max_pixels}: an upscaled small image "
            "could get more tokens than the largest image"
        )
    return best


def _image_rounding_to(
    height: int, width: int, factor: int, min_pixels: int, max_pixels: int
) -> tuple[int, int] | None:
    """An image ``smart_resize`` maps to ``height x width`` (multiples of ``factor``), or None if none exists.

    ``height x width`` itself when its aspect ratio is allowed; else the tallest
    height and narrowest width that still round to it, if their ratio is allowed.
    """
    candidates = [(height, width)]
    if width > MAX_ASPECT_RATIO * height:
        tall, narrow = height + factor // 2, width - factor // 2  # halves round to even: try one pixel in too
        candidates += [(h, w) for h in (tall, tall - 1) for w in (narrow, narrow + 1)]
    for h, w in candidates:
        if w <= MAX_ASPECT_RATIO * h and smart_resize(h, w, factor, min_pixels, max_pixels) == (height, width):
            return h, w
    return None


def video_grid(
    num_frames: int,
    resized_height: int,
    resized_width: int,
    *,
    patch_size: int,
    temporal_patch_size: int,
) -> Grid:
    """The patch grid of ``num_frames`` frames resized to ``resized_height x resized_width``.

    ``t = ceil(num_frames / temporal_patch_size)``: transformers pads the frames
    with copies of the last one to a multiple of ``temporal_patch_size``.
    """
    return Grid(-(-num_frames // temporal_patch_size), resized_height // patch_size, resized_width // patch_size)
