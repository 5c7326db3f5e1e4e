"""LLaVA-NeXT's registry hooks: image mapper, max image tokens, dummy data, input processor.

Each hook takes the image-token count from ``AnyresGeometry.num_image_tokens``
(``mmjax.processing.anyres``), the one function that computes it, so the
placeholders a prompt gets, the max-token bound, the dummy data and the
features the mapper's index map produces cannot disagree.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np
from PIL import Image

from mmjax.models.common.placeholders import expand_placeholders
from mmjax.processing.anyres import AnyresGeometry
from mmjax.processing.anyres_layout import TEXT, AnyresImages, pack_images, tile_buckets
from mmjax.registry import DecoderOnlyInputs, DummyData, InputContext, MultiModalInputs, PlaceholderRange
from mmjax.registry.image import as_item_list, check_image


def anyres_geometry(ctx: InputContext) -> AnyresGeometry:
    """The geometry of the model the context describes (its config, not its processor's)."""
    return AnyresGeometry.from_hf(ctx.get_hf_config())


def max_image_tokens(ctx: InputContext) -> int:
    """The most tokens one image becomes (2928 for llava-v1.6's pinpoints)."""
    return anyres_geometry(ctx).max_image_tokens()


def _images(data: object) -> list[Image.Image]:
    images = as_item_list(data, Image.Image, "image")
    if images is None:
        raise TypeError(
            f"LLaVA-NeXT needs PIL images (their size fixes the token count), got {type(data).__name__}"
        )
    return [check_image(image, i) for i, image in enumerate(images)]


def map_images_for_llava_next(ctx: InputContext, data: object) -> MultiModalInputs:
    """The checkpoint's LLaVA-NeXT image processor, then its tiles re-laid in a tile bucket.

    Returns:
      The model's image kwargs, ``anyres_layout.AnyresImages``' fields:
      ``pixel_values`` f32 ``[I, C, Y, X]``, ``tile_valid`` bool ``[I]``,
      ``placeholder_rows`` i32 ``[M]``.
    """
    geometry, processor = anyres_geometry(ctx), ctx.get_hf_image_processor()
    processor_pins = tuple(tuple(p) for p in getattr(processor, "image_grid_pinpoints", ()) or ())
    if processor_pins != geometry.pinpoints:
        raise ValueError(
            f"the image processor's image_grid_pinpoints {processor_pins} differ from the model's "
            f"{geometry.pinpoints}; the tiles would not match the placeholders"
        )
    images = _images(data)
    batch = processor(images, return_tensors="np")
    buckets = tile_buckets(len(images) * geometry.max_tiles)  # one image alone: the engine's unit
    packed = pack_images(geometry, np.asarray(batch["pixel_values"]), np.asarray(batch["image_sizes"]), buckets)
    return MultiModalInputs(dataclasses.asdict(packed))


def input_processor_for_llava_next(ctx: InputContext, inputs: DecoderOnlyInputs) -> DecoderOnlyInputs:
    """Expand the i-th ``<image>`` into ``num_image_tokens`` of the i-th image's size; record where.

    Raises:
      ValueError: the expanded prompt would not fit the context; says how many
        tokens the images need and how many are available.
    """
    config, geometry = ctx.get_hf_config(), anyres_geometry(ctx)
    data = inputs.multi_modal_data.get("image")
    images = [] if data is None else _images(data)
    counts = [geometry.num_image_tokens(image.height, image.width) for image in images]
    _check_fits(ctx, inputs.prompt_token_ids, images, counts, config.image_token_id)
    token_ids, ranges = expand_placeholders(inputs.prompt_token_ids, config.image_token_id, counts)
    placeholders = {"image": ranges} if data is not None else {}
    return dataclasses.replace(inputs, prompt_token_ids=token_ids, multi_modal_placeholders=placeholders)


def _check_fits(ctx: InputContext, token_ids, images: list[Image.Image], counts: list[int], marker: int) -> None:
    limit = ctx.model_config.context_length
    text = sum(t != marker for t in token_ids)
    if limit is None or text + sum(counts) <= limit:
        return
    sizes = ", ".join(f"image {i} ({im.width}x{im.height}): {n}" for i, (im, n) in enumerate(zip(images, counts)))
    raise ValueError(
        f"{ctx.model_config.name}: the images need {sum(counts)} placeholder tokens ({sizes}) but only "
        f"{max(0, limit - text)} are available: the context length is {limit} and the text takes {text}"
    )


def dummy_data_for_llava_next(ctx: InputContext, seq_len: int, mm_counts: Mapping[str, int]) -> DummyData:
    """``mm_counts["image"]`` images of the size with the most tokens, each with its full placeholder run."""
    config, geometry = ctx.get_hf_config(), anyres_geometry(ctx)
    (height, width), num_images = geometry.largest_image_size(), mm_counts["image"]
    per_image = geometry.num_image_tokens(height, width)
    token_ids = [config.image_token_id] * (per_image * num_images)
    token_ids += [0] * max(0, seq_len - len(token_ids))
    return DummyData(
        prompt_token_ids=token_ids,
        multi_modal_data={"image": [Image.new("RGB", (width, height))] * num_images},
        multi_modal_placeholders={"image": [PlaceholderRange(i * per_image, per_image) for i in range(num_images)]},
    )


def encoder_input_variants(ctx: InputContext) -> list[MultiModalInputs]:
    """One (zero) input per tile bucket of one image: every shape ``map_images_for_llava_next`` returns
    for the engine, which maps and encodes each image alone.

    Images of different aspect ratios fill different tile buckets, so the
    dummy data (the largest image) does not cover them; ``warmup()`` compiles
    the encoder for each of these instead.
    """
    geometry = anyres_geometry(ctx)
    rows_per_tile = geometry.base_tokens + geometry.patches_per_side
    side = geometry.tile_size
    return [MultiModalInputs(dataclasses.asdict(AnyresImages(
        pixel_values=np.zeros((bucket, 3, side, side), np.float32), tile_valid=np.zeros(bucket, bool),
        placeholder_rows=np.full(bucket * rows_per_tile, TEXT, np.int32))))
        for bucket in tile_buckets(geometry.max_tiles)]
