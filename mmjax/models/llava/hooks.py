"""LLaVA-1.5's registry hooks: max image tokens, dummy data, the input processor.

The image input mapper is the image plugin's default: the checkpoint's CLIP
image processor (RGB conversion, shortest-side resize, centre crop, rescale,
normalise) read from ``preprocessor_config.json`` or ``processor_config.json``.
Every hook takes the token count from ``image_token_count``, which reads
``LlavaConfig.image_tokens_per_image``: one number, computed in one place.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import jax
import numpy as np
from PIL import Image

from mmjax.models.llava.config import LlavaConfig
from mmjax.models.common.placeholders import expand_placeholders
from mmjax.registry import DecoderOnlyInputs, DummyData, InputContext, PlaceholderRange
from mmjax.registry.multimodal import count_items


def llava_config(ctx: InputContext) -> LlavaConfig:
    """The validated LLaVA config of the model the context describes."""
    return LlavaConfig.from_hf(ctx.get_hf_config())


def image_token_count(ctx: InputContext) -> int:
    """Placeholder tokens per image (576 for the 336/14 tower with the "default" strategy)."""
    return llava_config(ctx).image_tokens_per_image


def check_image_embeds(config: LlavaConfig, images: object) -> None:
    """Raise unless precomputed embeddings are ``[P, D]`` float arrays of finite values, one per image.

    ``P`` is ``image_tokens_per_image`` and ``D`` the decoder width: what ``image_features``
    returns for one image, and what each image's placeholders are filled with.
    """
    items = images if isinstance(images, list) else [images]
    want = (config.image_tokens_per_image, config.text.hidden_size)
    for index, item in enumerate(items):
        if not isinstance(item, (np.ndarray, jax.Array)):
            continue  # a PIL image: the image processor maps it
        shape, dtype = tuple(item.shape), np.dtype(item.dtype)
        if shape != want or not np.issubdtype(dtype, np.floating):
            raise ValueError(f"image {index}: precomputed image embeddings must be a float array of shape "
                             f"{list(want)} (image tokens per image, the decoder's hidden size), one per "
                             f"<image>; got {dtype.name}{list(shape)}")
        if not np.isfinite(np.asarray(item, np.float32)).all():
            raise ValueError(f"image {index}: precomputed image embeddings hold NaN or infinite values")


def input_processor_for_llava(ctx: InputContext, inputs: DecoderOnlyInputs) -> DecoderOnlyInputs:
    """Expand each ``<image>`` token into ``image_token_count`` placeholders and record where.

    Raises:
      ValueError: markers and images disagree, or precomputed embeddings have the wrong shape.
    """
    config = llava_config(ctx)
    images = inputs.multi_modal_data.get("image")
    if images is not None:
        check_image_embeds(config, images)
    num_images = 0 if images is None else count_items(images)
    token_ids, ranges = expand_placeholders(
        inputs.prompt_token_ids, config.image_token_index, [config.image_tokens_per_image] * num_images
    )
    placeholders = {"image": ranges} if images is not None else {}
    return dataclasses.replace(inputs, prompt_token_ids=token_ids, multi_modal_placeholders=placeholders)


def dummy_data_for_llava(ctx: InputContext, seq_len: int, mm_counts: Mapping[str, int]) -> DummyData:
    """``mm_counts["image"]`` images at the tower's resolution, each with its full placeholder run."""
    config = llava_config(ctx)
    per_image, num_images = config.image_tokens_per_image, mm_counts["image"]
    token_ids = [config.image_token_index] * (per_image * num_images)
    token_ids += [0] * max(0, seq_len - len(token_ids))
    size = config.vision.image_size
    return DummyData(
        prompt_token_ids=token_ids,
        multi_modal_data={"image": [Image.new("RGB", (size, size))] * num_images},
        multi_modal_placeholders={"image": [PlaceholderRange(i * per_image, per_image) for i in range(num_images)]},
    )
