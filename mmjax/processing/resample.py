"""Resizing uint8 RGB pixels the two ways transformers does it: Pillow, or torch's antialiased kernel.

transformers' image processors come in two backends that resize differently:

* the PIL backend (``Qwen2VLImageProcessorPil``, what ``AutoImageProcessor``
  gives when torchvision is not installed) calls ``PIL.Image.resize``:
  ``resize_pil``;
* the torchvision backend (``Qwen2VLImageProcessor`` and every video
  processor) calls ``torchvision.transforms.v2.functional.resize``, which on
  a CPU uint8 tensor runs torch's own antialiased kernel
  (``aten/src/ATen/native/cpu/UpSampleKernel.cpp``): ``resize_like_torch``.

Both are separable (width first, then height, through a uint8 intermediate)
with the same Keys cubic (a = -0.5) and the same support, but Pillow rounds
its weights to 22 fractional bits while torch picks the most bits an int16
holds, so about 0.6 % of the pixels differ by 1 or 2. ``resize_like_torch``
recomputes torch's integer weights and sums, so its output is torch's to the
bit (the tests compare it with ``torch.nn.functional.interpolate``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import PIL.Image

#: PIL's resample codes (``PIL.Image.Resampling``), as the processor configs write them.
BILINEAR = int(PIL.Image.Resampling.BILINEAR)
BICUBIC = int(PIL.Image.Resampling.BICUBIC)


def resize_pil(image: np.ndarray, size: tuple[int, int], resample: int = BICUBIC) -> np.ndarray:
    """``PIL.Image.resize`` of a uint8 ``[Y, X, 3]`` image to ``size = (height, width)``: uint8 ``[h, w, 3]``."""
    height, width = size
    resized = PIL.Image.fromarray(image).resize((width, height), resample=resample)
    return np.asarray(resized)


def _linear_filter(x: float) -> float:
    x = abs(x)
    return 1.0 - x if x < 1.0 else 0.0


def _cubic_filter(x: float) -> float:
    """Keys' cubic convolution with a = -0.5, as ``cubic_convolution1/2`` of ATen's ``UpSample.h`` evaluate it."""
    a = -0.5
    x = abs(x)
    if x < 1.0:
        return ((a + 2) * x - (a + 3)) * x * x + 1
    if x < 2.0:
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return 0.0


#: resample code -> (filter, interp_size) of ATen's HelperInterpLinear / HelperInterpCubic.
_TORCH_FILTERS: dict[int, tuple[Callable[[float], float], int]] = {
    BILINEAR: (_linear_filter, 2),
    BICUBIC: (_cubic_filter, 4),
}


def _torch_axis_weights(in_size: int, out_size: int, resample: int) -> tuple[np.ndarray, np.ndarray, int]:
    """One axis of torch's uint8 antialiased resampling: taps ``[out, k]``, int16 weights ``[out, k]``, precision.

    ``HelperInterpBase::_compute_index_ranges_int16_weights`` (align_corners False,
    no explicit scale): float64 weights normalized per output pixel, then scaled
    by ``2**precision`` with ``precision`` the largest (< 22) that keeps the biggest
    weight of the axis in an int16. Taps past an output pixel's window get weight 0
    (their index is clamped so they can be gathered).
    """
    filter_fn, interp_size = _TORCH_FILTERS[resample]
    scale = in_size / out_size
    support = (interp_size * 0.5) * scale if scale >= 1.0 else interp_size * 0.5
    max_taps = math.ceil(support) * 2 + 1
    invscale = 1.0 / scale if scale >= 1.0 else 1.0
    starts = np.zeros(out_size, dtype=np.int64)
    weights = np.zeros((out_size, max_taps), dtype=np.float64)
    for i in range(out_size):
        center = scale * (i + 0.5)
        xmin = max(int(center - support + 0.5), 0)
        xsize = min(max(min(int(center + support + 0.5), in_size) - xmin, 0), max_taps)
        row = [filter_fn((j + xmin - center + 0.5) * invscale) for j in range(xsize)]
        total = 0.0
        for w in row:  # sequential float64 sum, as the C++ loop accumulates
            total += w
        if total != 0.0:
            row = [w / total for w in row]
        starts[i] = xmin
        weights[i, :xsize] = row
    wt_max = float(weights.max(initial=0.0))
    precision = 0
    while precision < 22 and int(0.5 + wt_max * (1 << (precision + 1))) < (1 << 15):
        precision += 1
    scaled = weights * (1 << precision)
    int_weights = np.where(scaled < 0, (-0.5 + scaled).astype(np.int64), (0.5 + scaled).astype(np.int64))
    taps = np.minimum(starts[:, None] + np.arange(max_taps)[None, :], in_size - 1)
    return taps, int_weights.astype(np.int32), precision


def _torch_resample_axis(pixels: np.ndarray, out_size: int, axis: int, resample: int) -> np.ndarray:
    """Resample uint8 ``pixels`` along ``axis`` to ``out_size``: torch's integer sum, rounding and clamp."""
    taps, weights, precision = _torch_axis_weights(pixels.shape[axis], out_size, resample)
    shape = [1] * pixels.ndim
    shape[axis] = out_size
    out_shape = list(pixels.shape)
    out_shape[axis] = out_size
    acc = np.full(out_shape, 1 << (precision - 1), dtype=np.int32)
    term = np.empty(out_shape, dtype=np.int32)
    for k in range(taps.shape[1]):
        np.multiply(np.take(pixels, taps[:, k], axis=axis), weights[:, k].reshape(shape), out=term)
        acc += term
    np.right_shift(acc, precision, out=acc)
    return np.clip(acc, 0, 255).astype(np.uint8)


def resize_like_torch(frames: np.ndarray, size: tuple[int, int], resample: int = BICUBIC) -> np.ndarray:
    """torchvision's CPU resize of uint8 ``[..., Y, X, C]`` pixels to ``size = (height, width)``, antialiased.

    Equal, bit for bit, to ``torchvision.transforms.v2.functional.resize(..., antialias=True)``
    on a CPU uint8 tensor for ``resample`` bilinear or bicubic (the only modes torch
    resizes natively in uint8): width first, then height; an axis whose size does not
    change is copied. Returns uint8 ``[..., h, w, C]``.
    """
    if resample not in _TORCH_FILTERS:
        raise ValueError(
            f"resize_like_torch supports resample {sorted(_TORCH_FILTERS)} (bilinear, bicubic), got {resample}"
        )
    if frames.dtype != np.uint8 or frames.ndim < 3:
        raise ValueError(f"expected uint8 pixels [..., Y, X, C], got {frames.dtype} of shape {frames.shape}")
    height, width = size
    out = frames
    if out.shape[-2] != width:
        out = _torch_resample_axis(out, width, axis=out.ndim - 2, resample=resample)
    if out.shape[-3] != height:
        out = _torch_resample_axis(out, height, axis=out.ndim - 3, resample=resample)
    return out
