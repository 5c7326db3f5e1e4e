"""Host-side (numpy) layout of a packed Qwen vision-tower call: what transformers computes from ``grid_thw``.

A call packs the patches of several items (images, videos; each with its grid
``(t, h, w)`` in patches) into one bucket of ``P`` rows; rows past the items'
patches are padding. Everything that depends on the grids is computed here, as
arrays whose shapes depend on ``P`` only, so one compiled tower serves every
mix of items that fits its bucket:

- rotary ``(h, w)`` ids of every row, in merge-block order (``get_vision_position_ids``);
- a segment id per row for full attention: one segment per frame of an item
  (transformers' ``cu_seqlens``), and for window attention one per window
  (``cu_window_seqlens``); ``-1`` on padding rows;
- the valid mask (padding rows attend nothing and produce nothing);
- Qwen2.5-VL: the window permutation of merge units (``get_vision_window_index``)
  and its inverse.

Bucket rule: a bucket's ``P`` is a multiple of the merge unit (``spatial_merge_size ** 2``
= 4): every item's patch count is one, so merge units never straddle items or
padding. ``patch_buckets`` gives the default ladder (powers of two from
``smallest``, the last one capped at the limit), ``bucket_rows`` the bucket a
call goes to; at most half of a bucket beyond ``smallest`` is padding.

Shape letters: ``P`` packed patch rows of a call (its bucket), ``merged`` its merge
units (``P / spatial_merge_size**2``), ``num_items`` the items of the call.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import numpy as np

from mmjax.types import Bool, Int

from mmjax.models.common.vision_packing import (  # noqa: F401 (re-exported: the layout's vocabulary)
    Grid, bucket_rows, check_grids, frame_of_patch, merge_order_hw, num_patches, pad_rows, patch_buckets, rotary_ids,
)


def window_units(grid: Grid, merge: int, units_per_window: int) -> np.ndarray:
    """``[t * h/merge * w/merge]`` the window of each merge unit of one item, numbered from 0 in order.

    Windows tile each frame's grid of merge units in ``units_per_window``-square
    blocks from the top-left; those on the bottom and right edges are smaller
    when the grid is not a multiple (transformers pads, then drops the padding).
    """
    t, h, w = grid
    gh, gw = h // merge, w // merge
    across = -(-gw // units_per_window)
    down = -(-gh // units_per_window)
    frame, y, x = np.meshgrid(np.arange(t), np.arange(gh), np.arange(gw), indexing="ij")
    return ((frame * down + y // units_per_window) * across + x // units_per_window).reshape(-1)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class WindowedVisionLayout:
    """One Qwen2.5-VL tower call's layout; rows are in *window order* (each window's units contiguous).

    Window order is transformers' (``window_index``): its attention then sums in
    the same order, and each window is a contiguous run of rows.
    """

    #: window-order unit ``j`` is the processor's unit ``window_index[j]``; padding units map to themselves.
    window_index: Int[np.ndarray, "merged"]
    #: the inverse permutation: merged output row ``u`` (processor order) is window-order row ``reverse_index[u]``.
    reverse_index: Int[np.ndarray, "merged"]
    rotary_ids: Int[np.ndarray, "P 2"]
    frame_segments: Int[np.ndarray, "P"]
    window_segments: Int[np.ndarray, "P"]
    valid: Bool[np.ndarray, "P"]


def windowed_vision_layout(
    grid_thw: Sequence[Grid] | np.ndarray, rows: int, *, merge: int, window_size: int, patch_size: int
) -> WindowedVisionLayout:
    """The layout of a Qwen2.5-VL tower call over these items, padded to ``rows`` patch rows.

    Args:
      grid_thw: ``[num_items, 3]`` each item's ``(t, h, w)`` in patches, in the order their patches are packed.
      rows: the bucket (``P``); a multiple of ``merge**2`` holding every item's patches.
      merge: ``spatial_merge_size``.
      window_size: ``window_size`` of the config, in pixels.
      patch_size: ``patch_size`` of the config, in pixels.
    """
    grids = check_grids(grid_thw, merge)
    unit = merge * merge
    units_per_window = window_size // merge // patch_size
    if units_per_window < 1:
        raise ValueError(f"window_size={window_size} is smaller than one merge unit ({merge * patch_size} px)")
    count = num_patches(grids)
    if rows % unit or rows < count:
        raise ValueError(f"a bucket of {rows} rows must be a multiple of {unit} and hold the {count} patches")

    order, windows, offset, first_window = [], [], 0, 0
    for grid in grids:
        window = window_units(grid, merge, units_per_window)
        perm = np.argsort(window, kind="stable")  # raster order inside a window, as transformers keeps it
        order.append(perm + offset)
        windows.append(window[perm] + first_window)
        offset += window.size
        first_window += int(window.max()) + 1
    pad_units = rows // unit - offset
    window_index = np.concatenate(order + [np.arange(offset, offset + pad_units)]).astype(np.int32)
    window_of_unit = np.concatenate(windows + [np.full(pad_units, -1)]).astype(np.int32)

    valid = np.arange(rows) < count
    frames = np.concatenate([frame_of_patch(grids), np.full(rows - count, -1, np.int32)])
    ids = np.concatenate([rotary_ids(grids, merge), np.zeros((rows - count, 2), np.int32)])
    by_unit = lambda a: a.reshape(rows // unit, unit, *a.shape[1:])[window_index].reshape(a.shape)  # noqa: E731
    return WindowedVisionLayout(
        window_index=window_index,
        reverse_index=np.argsort(window_index).astype(np.int32),
        rotary_ids=by_unit(ids),
        frame_segments=by_unit(frames),
        window_segments=np.repeat(window_of_unit, unit),
        valid=valid,  # padding units stay at the end in window order
    )
