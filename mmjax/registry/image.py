"""``ImagePlugin``: images (PIL) or precomputed image embeddings (arrays)."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from PIL import Image

from mmjax.registry.config import InputContext
from mmjax.registry.inputs import MultiModalInputs
from mmjax.registry.plugin import MultiModalPlugin

#: vLLM's image plugin default, used only when a model registers no count of its own.
DEFAULT_MAX_IMAGE_TOKENS = 3000


def as_item_list(data: object, item_type: type | tuple[type, ...], modality: str) -> list[Any] | None:
    """``[data]`` for one item, ``data`` for a non-empty list of items, None for another type.

    Raises:
      ValueError: an empty list.
    """
    if isinstance(data, item_type):
        return [data]
    if isinstance(data, list) and data and all(isinstance(d, item_type) for d in data):
        return data
    if isinstance(data, list) and not data:
        raise ValueError(f"empty list of {modality} items: pass at least one, or leave the key out")
    return None


def check_image(image: Image.Image, index: int) -> Image.Image:
    """Decode ``image`` (PIL opens files lazily) and check it has pixels.

    Raises:
      ValueError: corrupt or truncated image data, or a zero-size image.
    """
    try:
        image.load()
    except (OSError, SyntaxError, ValueError) as err:
        raise ValueError(f"image {index} could not be decoded (corrupt or truncated data): {err}") from err
    if image.width < 1 or image.height < 1:
        raise ValueError(f"image {index} has zero size ({image.width}x{image.height}); expected at least 1x1")
    return image


def _image_processor_keywords(processor: Any) -> frozenset[str] | None:
    """The per-call options a transformers image processor accepts (None: unknown, pass all)."""
    valid = getattr(processor, "valid_kwargs", None)
    if valid is None:
        return None
    keys = getattr(valid, "__required_keys__", set()) | getattr(valid, "__optional_keys__", set())
    return frozenset(keys) - {"return_tensors", "device"}  # the mapper fixes these: numpy, host


class ImagePlugin(MultiModalPlugin):
    """Plugin for image data: ``multi_modal_data={"image": PIL image | list | embeddings}``.

    The default input mapper runs the checkpoint's Hugging Face image processor
    (PIL backend, numpy outputs: no torch) with ``mm_processor_kwargs`` as
    per-call options; arrays are taken as precomputed ``image_embeds``.
    """

    def get_data_key(self) -> str:
        return "image"

    def _default_input_mapper(self, ctx: InputContext, data: object, **mm_processor_kwargs: Any) -> MultiModalInputs:
        images = as_item_list(data, Image.Image, "image")
        if images is not None:
            images = [check_image(image, i) for i, image in enumerate(images)]
            return self._run_image_processor(ctx, images, mm_processor_kwargs)
        if as_item_list(data, (np.ndarray, jax.Array), "image") is not None:
            return MultiModalInputs(image_embeds=data)
        raise TypeError(
            f"invalid image data of type {type(data).__name__}: expected a PIL.Image.Image, "
            f"a list of them, or an array of precomputed image embeddings"
        )

    def _run_image_processor(
        self, ctx: InputContext, images: list[Image.Image], kwargs: dict[str, Any]
    ) -> MultiModalInputs:
        processor = ctx.get_hf_image_processor()
        accepted = _image_processor_keywords(processor)
        if accepted is not None:  # other keys are for other hooks (or warned about by the registry)
            kwargs = {k: v for k, v in kwargs.items() if k in accepted}
        batch = processor(images, return_tensors="np", **kwargs)
        return MultiModalInputs({k: np.asarray(v) for k, v in batch.items()})

    def _default_mapper_keywords(self, ctx: InputContext) -> frozenset[str] | None:
        return _image_processor_keywords(ctx.get_hf_image_processor())

    def _default_max_multimodal_tokens(self, ctx: InputContext) -> int:
        return DEFAULT_MAX_IMAGE_TOKENS
