"""One image to Gemma 3's SigLIP input: transformers' ``Gemma3ImageProcessor`` in numpy and PIL.

``process_image`` converts the image to RGB, cuts it into pan-and-scan crops (``gemma3_crops``) when the
settings say so, resizes the image and each crop to ``size`` (bilinear, ignoring the aspect ratio),
rescales and normalizes: exactly transformers 5.25's processor. With the PIL backend
(``Gemma3ImageProcessorPil``, what ``AutoProcessor`` loads without torchvision) each is resized by
``PIL.Image.resize``; with ``backend="torchvision"`` (``Gemma3ImageProcessor``) by torch's antialiased
kernel (``resample.resize_like_torch``), the rescale fused into the normalization.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from mmjax.processing.gemma3_config import Gemma3ImageConfig
from mmjax.processing.gemma3_crops import crop_boxes
from mmjax.processing.qwen_vl_image import ImageInput, to_rgb_array  # transformers' RGB conversion, shared
from mmjax.processing.qwen_vl_patches import normalize  # transformers' rescale + normalize of either backend
from mmjax.processing.resample import resize_like_torch, resize_pil


class Gemma3ImageInputs(NamedTuple):
    """One image mapped for the vision tower.

    pixel_values: float32 ``[1 + num_crops, 3, height, width]``: the whole image, then its crops row by row
    num_crops: pan-and-scan crops (0: the image alone)
    """

    pixel_values: np.ndarray
    num_crops: int


def _resize(rgb: np.ndarray, config: Gemma3ImageConfig) -> np.ndarray:
    if config.backend == "pil":
        return resize_pil(rgb, config.size, config.resample)
    return resize_like_torch(rgb, config.size, config.resample)


def process_image(image: ImageInput, config: Gemma3ImageConfig) -> Gemma3ImageInputs:
    """An RGB PIL image or uint8 ``[Y, X, 3]`` array -> ``Gemma3ImageInputs`` equal to transformers' processor output.

    Raises:
      ValueError: a wrong type, dtype or shape, or an empty side.
    """
    rgb = to_rgb_array(image)
    height, width = rgb.shape[:2]
    if height < 1 or width < 1:
        raise ValueError(f"the image has an empty side ({height}x{width}); expected at least 1x1")
    boxes = crop_boxes(height, width, config.pan_and_scan)
    views = [rgb] + [rgb[b.top:b.top + b.height, b.left:b.left + b.width] for b in boxes]
    resized = np.stack([_resize(np.ascontiguousarray(view), config) for view in views])
    pixels = normalize(resized, image_mean=config.image_mean, image_std=config.image_std,
                       rescale_factor=config.rescale_factor, backend=config.backend)
    return Gemma3ImageInputs(np.ascontiguousarray(pixels, dtype=np.float32), len(boxes))
