"""From resized uint8 frames to the Qwen vision tower's flat patches, in transformers' exact order and floats.

``normalize`` scales and normalizes the pixels with the float32 expression of
the backend that resized them (the two differ in the last bit):

* PIL backend: ``float32(float64(x) * rescale_factor)``, then ``(x - mean) / std``;
* torchvision backend: rescale fused into normalize, ``(float32(x) - mean / rescale_factor) / (std / rescale_factor)``.

``patchify`` cuts ``[F, C, Y, X]`` frames into ``patch_size`` squares, groups
``temporal_patch_size`` consecutive frames, and orders the patches so that
every ``merge_size x merge_size`` block that becomes one token is contiguous:
row ``((t * (h / m) + bh) * (w / m) + bw) * m * m + mh * m + mw`` holds the
patch at time step ``t``, row ``bh * m + mh``, column ``bw * m + mw``, its
values flattened in ``(C, T, P, P)`` order. An image is a one-frame video:
the frames are padded with copies of the last one to a multiple of
``temporal_patch_size``, so an image's patch holds ``temporal_patch_size``
copies of its pixels.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mmjax.processing.qwen_vl_config import ResizeBackend


def normalize(
    pixels: np.ndarray,
    *,
    image_mean: Sequence[float],
    image_std: Sequence[float],
    rescale_factor: float,
    backend: ResizeBackend,
) -> np.ndarray:
    """uint8 ``[..., Y, X, C]`` -> float32 ``[..., C, Y, X]``, ``(x * rescale_factor - mean) / std`` per channel."""
    channels_first = np.moveaxis(pixels, -1, -3)
    shape = (len(image_mean), 1, 1)
    if backend == "pil":
        mean = np.asarray(image_mean, dtype=np.float32).reshape(shape)
        std = np.asarray(image_std, dtype=np.float32).reshape(shape)
        scaled = (channels_first.astype(np.float64) * rescale_factor).astype(np.float32)
        return (scaled - mean) / std
    if backend == "torchvision":
        inverse = np.float32(1.0 / rescale_factor)
        mean = np.asarray(image_mean, dtype=np.float32).reshape(shape) * inverse
        std = np.asarray(image_std, dtype=np.float32).reshape(shape) * inverse
        return (channels_first.astype(np.float32) - mean) / std
    raise ValueError(f"unknown resize backend {backend!r}: expected 'pil' or 'torchvision'")


def patchify(frames: np.ndarray, *, patch_size: int, temporal_patch_size: int, merge_size: int) -> np.ndarray:
    """float32 ``[F, C, Y, X]`` frames -> ``[t * h * w, C * T * P * P]`` patches (``t = ceil(F / T)``).

    ``Y`` and ``X`` must be multiples of ``patch_size * merge_size`` (``smart_resize``'s sizes).
    """
    num_frames, channels, height, width = frames.shape
    factor = patch_size * merge_size
    if height % factor or width % factor:
        raise ValueError(f"frame size {height}x{width} is not a multiple of patch_size * merge_size = {factor}")
    if pad := -num_frames % temporal_patch_size:
        frames = np.concatenate([frames, np.repeat(frames[-1:], pad, axis=0)], axis=0)
    grid_t, grid_h, grid_w = frames.shape[0] // temporal_patch_size, height // patch_size, width // patch_size
    patches = frames.reshape(
        grid_t, temporal_patch_size, channels,
        grid_h // merge_size, merge_size, patch_size,
        grid_w // merge_size, merge_size, patch_size,
    )  # fmt: skip
    # (t, bh, bw, mh, mw, C, T, P, P)
    patches = patches.transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)
    return np.ascontiguousarray(patches).reshape(
        grid_t * grid_h * grid_w, channels * temporal_patch_size * patch_size * patch_size
    )
