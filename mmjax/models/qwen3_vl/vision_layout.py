"""Host-side (numpy) layout of a packed Qwen3-VL vision-tower call.

As Qwen2.5-VL's (``mmjax.models.qwen2_5_vl.vision_layout``, whose bucket rule
and helpers it shares) without windows, plus the taps of the learned position
embedding: transformers resamples its square ``side x side`` table to each
item's ``(h, w)`` grid bilinearly with ``align_corners=True``
(``get_vision_interpolation_indices_and_weights``); each patch row gets the 4
table rows and weights of its sample.

Shape letters: ``P`` packed patch rows of a call (its bucket).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import numpy as np

from mmjax.models.common.vision_packing import Grid, check_grids, frame_of_patch, merge_order_hw, num_patches
from mmjax.models.common.vision_packing import rotary_ids as packed_rotary_ids
from mmjax.types import Bool, Float, Int


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class VisionLayout:
    """One Qwen3-VL tower call's layout; rows in the processor's order (merge-block order per frame)."""

    rotary_ids: Int[np.ndarray, "P 2"]
    frame_segments: Int[np.ndarray, "P"]
    valid: Bool[np.ndarray, "P"]
    #: rows of the flattened ``[side * side, E]`` position table to blend: (top, bottom) x (left, right).
    pos_indices: Int[np.ndarray, "P 4"]
    pos_weights: Float[np.ndarray, "P 4"]


def _axis_taps(index: np.ndarray, size: int, side: int) -> tuple[np.ndarray, np.ndarray]:
    """Two taps into a ``side``-long axis and their weights, for ``index`` on an axis of ``size``
    (``align_corners=True``: the end points map to 0 and ``side - 1``), in float32 as transformers computes them."""
    src = index.astype(np.float32) * np.float32(side - 1) / np.float32(max(size - 1, 1))
    floor = np.floor(src)
    raw = floor.astype(np.int64)[:, None] + np.arange(2)
    weights = np.clip(1 - np.abs(src[:, None] - raw.astype(np.float32)), 0, None)  # 0 for a tap past the end
    return np.clip(raw, 0, side - 1), weights.astype(np.float32)


def position_taps(grid: Grid, merge: int, side: int) -> tuple[np.ndarray, np.ndarray]:
    """``([t*h*w, 4] indices, [t*h*w, 4] weights)`` of one item's patches, in the processor's order."""
    t, h, w = grid
    hw = merge_order_hw(h, w, merge)
    h_taps, h_weights = _axis_taps(hw[:, 0], h, side)
    w_taps, w_weights = _axis_taps(hw[:, 1], w, side)
    indices = (h_taps[:, :, None] * side + w_taps[:, None, :]).reshape(-1, 4)
    weights = (h_weights[:, :, None] * w_weights[:, None, :]).reshape(-1, 4)
    return np.tile(indices, (t, 1)), np.tile(weights, (t, 1))


def vision_layout(grid_thw: Sequence[Grid] | np.ndarray, rows: int, *, merge: int, side: int) -> VisionLayout:
    """The layout of a Qwen3-VL tower call over these items, padded to ``rows`` patch rows.

    Args:
      grid_thw: ``[num_items, 3]`` each item's ``(t, h, w)`` in patches, in the order their patches are packed.
      rows: the bucket (``P``); a multiple of ``merge**2`` holding every item's patches.
      merge: ``spatial_merge_size``.
      side: the position table's side, ``int(num_position_embeddings ** 0.5)``.
    """
    grids = check_grids(grid_thw, merge)
    count = num_patches(grids)
    if rows % (merge * merge) or rows < count:
        raise ValueError(f"a bucket of {rows} rows must be a multiple of {merge * merge} and hold the {count} patches")
    pad = rows - count
    taps = [position_taps(g, merge, side) for g in grids]
    indices = np.concatenate([i for i, _ in taps] + [np.zeros((pad, 4), np.int64)]).astype(np.int32)
    weights = np.concatenate([w for _, w in taps] + [np.zeros((pad, 4), np.float32)])
    return VisionLayout(
        rotary_ids=np.concatenate([packed_rotary_ids(grids, merge), np.zeros((pad, 2), np.int32)]),
        frame_segments=np.concatenate([frame_of_patch(grids), np.full(pad, -1, np.int32)]),
        valid=np.arange(rows) < count,
        pos_indices=indices,
        pos_weights=weights,
    )
