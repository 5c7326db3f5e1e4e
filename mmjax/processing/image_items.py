"""A prompt's images as hooks take them: PIL images or ``[height, width, 3]`` arrays, and their sizes."""

from __future__ import annotations

import numpy as np
from PIL import Image

ImageItem = Image.Image | np.ndarray


def images_of(data: object, model: str) -> list[ImageItem]:
    """A prompt's ``multi_modal_data["image"]`` as a list, or a TypeError naming the first item of a wrong type
    and the ``model`` that refused it."""
    items = data if isinstance(data, list) else [data]
    for index, item in enumerate(items):
        if not isinstance(item, (Image.Image, np.ndarray)):
            raise TypeError(f"image {index}: {model} takes PIL images or uint8 [height, width, 3] arrays, "
                            f"got {type(item).__name__}")
    return items


def image_size(image: ImageItem) -> tuple[int, int]:
    """``(height, width)`` of a PIL image or an ``[height, width, 3]`` array."""
    return (image.height, image.width) if isinstance(image, Image.Image) else tuple(np.shape(image)[:2])
