"""One image to the Qwen vision tower's input: transformers' ``Qwen2VLImageProcessor`` in numpy and PIL.

``process_image`` resizes the image to ``smart_resize``'s size, normalizes
it and cuts it into patches, exactly as transformers 5.25's default image
processor for Qwen2-VL, Qwen2.5-VL and Qwen3-VL checkpoints does. Without
torchvision installed that default is ``Qwen2VLImageProcessorPil`` (resized
by ``PIL.Image.resize``, bicubic): ``QwenImageConfig.backend = "pil"``.
With torchvision it is ``Qwen2VLImageProcessor`` (torch's antialiased
kernel, fused normalization): ``backend = "torchvision"``. The two differ by
a grey level in about 0.6 % of the resized pixels; the grid and the token
count do not depend on the backend.
"""

from __future__ import annotations

from typing import NamedTuple, Union

import numpy as np
import PIL.Image

from mmjax.processing.qwen_vl_config import QwenImageConfig
from mmjax.processing.qwen_vl_geometry import Grid, smart_resize
from mmjax.processing.qwen_vl_patches import normalize, patchify
from mmjax.processing.resample import resize_like_torch, resize_pil

ImageInput = Union[PIL.Image.Image, np.ndarray]


class QwenImageInputs(NamedTuple):
    """One image mapped for the vision tower.

    pixel_values: float32 ``[grid.h * grid.w, C * temporal_patch_size * patch_size**2]``
    grid_thw: the patch grid ``(1, h, w)`` (transformers' ``image_grid_thw`` row)
    num_tokens: placeholder tokens, ``h * w // merge_size**2``
    """

    pixel_values: np.ndarray
    grid_thw: Grid
    num_tokens: int


def to_rgb_array(image: ImageInput) -> np.ndarray:
    """A PIL image (any mode) or a uint8 ``[Y, X, 3]`` array -> uint8 ``[Y, X, 3]`` RGB.

    PIL images convert as transformers converts them: transparency is composited
    onto white, any other mode goes through ``Image.convert("RGB")``.
    """
    if isinstance(image, PIL.Image.Image):
        if "A" in image.getbands() or image.info.get("transparency") is not None:
            rgba = image.convert("RGBA")
            white = PIL.Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            image = PIL.Image.alpha_composite(white, rgba)
        return np.asarray(image.convert("RGB"))
    if not isinstance(image, np.ndarray):
        raise ValueError(f"expected a PIL image or a uint8 [height, width, 3] array, got {type(image).__name__}")
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"expected a uint8 [height, width, 3] RGB array, got {image.dtype} of shape {image.shape}")
    return image


def resize_rgb(rgb: np.ndarray, size: tuple[int, int], config: QwenImageConfig) -> np.ndarray:
    """uint8 ``[Y, X, 3]`` -> uint8 ``[h, w, 3]`` with ``config``'s backend and resample filter."""
    if config.backend == "pil":
        return resize_pil(rgb, size, config.resample)
    return resize_like_torch(rgb, size, config.resample)


def process_image(image: ImageInput, config: QwenImageConfig) -> QwenImageInputs:
    """An RGB PIL image or uint8 ``[Y, X, 3]`` array -> ``QwenImageInputs`` equal to transformers' processor output.

    Raises ``ValueError`` for a wrong type, dtype or shape, an empty side, or an
    aspect ratio over 200 (transformers' limit).
    """
    rgb = to_rgb_array(image)
    height, width = rgb.shape[:2]
    size = smart_resize(height, width, config.factor, config.min_pixels, config.max_pixels)
    resized = resize_rgb(rgb, size, config)
    pixels = normalize(
        resized,
        image_mean=config.image_mean,
        image_std=config.image_std,
        rescale_factor=config.rescale_factor,
        backend=config.backend,
    )
    pixel_values = patchify(
        pixels[None],
        patch_size=config.patch_size,
        temporal_patch_size=config.temporal_patch_size,
        merge_size=config.merge_size,
    )
    grid = Grid(1, size[0] // config.patch_size, size[1] // config.patch_size)
    return QwenImageInputs(pixel_values, grid, grid.h * grid.w // config.merge_size**2)
