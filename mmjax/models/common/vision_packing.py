"""Packing vision items into one bucket of patch rows (host, numpy): grids, buckets, per-row ids.

A Qwen-VL tower call packs the patches of several items (images, videos; each
with its grid ``(t, h, w)`` in patches) into one bucket of ``P`` rows; rows past
the items' are padding. Shapes depend on ``P`` only, so one compiled tower serves
every mix of items that fits its bucket.

Bucket rule: a bucket's ``P`` is a multiple of the merge unit (``spatial_merge_size ** 2``):
every item's patch count is one, so merge units never straddle items or padding.
``patch_buckets`` gives the default ladder (powers of two from ``smallest``, the last
capped at the limit), ``bucket_rows`` the bucket a call goes to.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: ``(t, h, w)``: an item's grid in patches (frames after temporal patching, rows, columns).
Grid = tuple[int, int, int]


def check_grids(grid_thw: Sequence[Grid] | np.ndarray, merge: int) -> list[Grid]:
    """The grids as int triples, or raise naming the first one the tower cannot take."""
    grids = [tuple(int(v) for v in g) for g in np.asarray(grid_thw, dtype=np.int64).reshape(-1, 3)]
    for i, (t, h, w) in enumerate(grids):
        if t < 1 or h < 1 or w < 1 or h % merge or w % merge:
            raise ValueError(
                f"grid_thw[{i}] = {(t, h, w)}: t, h, w must be positive, h and w multiples of "
                f"spatial_merge_size={merge}"
            )
    return grids


def num_patches(grid_thw: Sequence[Grid] | np.ndarray) -> int:
    """Rows the items' patches fill (``sum(t * h * w)``)."""
    return int(np.prod(np.asarray(grid_thw, dtype=np.int64).reshape(-1, 3), axis=1).sum())


def patch_buckets(max_patches: int, *, smallest: int = 256, merge: int = 2) -> tuple[int, ...]:
    """The bucket ladder: ``smallest, 2 * smallest, ...`` up to ``max_patches`` (rounded up to the merge unit)."""
    unit = merge * merge
    if smallest % unit or smallest <= 0:
        raise ValueError(f"smallest={smallest} must be a positive multiple of the merge unit {unit}")
    top = -(-max_patches // unit) * unit
    buckets = [smallest]
    while buckets[-1] < top:
        buckets.append(min(2 * buckets[-1], top))
    return tuple(buckets)


def bucket_rows(count: int, buckets: Sequence[int]) -> int:
    """The smallest bucket holding ``count`` patch rows."""
    for rows in sorted(buckets):
        if rows >= count:
            return rows
    raise ValueError(f"{count} patches exceed the largest vision bucket ({max(buckets)} rows)")


def pad_rows(patches: np.ndarray, rows: int) -> np.ndarray:
    """``patches`` with zero rows appended up to ``rows``."""
    if patches.shape[0] > rows:
        raise ValueError(f"{patches.shape[0]} patch rows do not fit a bucket of {rows}")
    return np.concatenate([patches, np.zeros((rows - patches.shape[0], *patches.shape[1:]), patches.dtype)])


def merge_order_hw(h: int, w: int, merge: int) -> np.ndarray:
    """``[h * w, 2]`` (row, col) of one frame's patches in merge-block order.

    The processor emits patches block by block (``merge x merge`` blocks in raster
    order, raster order inside a block), so the merger's groups of ``merge**2``
    consecutive rows are spatial blocks.
    """
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    shape = (h // merge, merge, w // merge, merge)
    return np.stack([a.reshape(shape).transpose(0, 2, 1, 3).reshape(-1) for a in (rows, cols)], axis=-1)


def rotary_ids(grids: Sequence[Grid], merge: int) -> np.ndarray:
    """``[sum(t*h*w), 2]`` rotary (h, w) ids of the items' patches, in the processor's order."""
    parts = [np.tile(merge_order_hw(h, w, merge), (t, 1)) for t, h, w in grids]
    return np.concatenate(parts).astype(np.int32) if parts else np.zeros((0, 2), np.int32)


def frame_of_patch(grids: Sequence[Grid]) -> np.ndarray:
    """``[sum(t*h*w)]`` the global frame number of each patch: one full-attention segment per frame."""
    sizes = [h * w for t, h, w in grids for _ in range(t)]
    return np.repeat(np.arange(len(sizes)), sizes).astype(np.int32)
