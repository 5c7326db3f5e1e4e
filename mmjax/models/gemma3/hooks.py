"""Gemma 3's registry hooks: the image mapper, max tokens, dummy data, the input processor, soft-token spans.

Everything is read from ``ctx.get_hf_config()`` (transformers' ``Gemma3Config``: ``mm_tokens_per_image``,
``boi_token_index``, ``eoi_token_index``, ``image_token_index``, ``vision_config.image_size``), the
checkpoint's ``preprocessor_config.json`` (``processing.gemma3_config``) and its tokenizer.

An image is one ``PlaceholderRange`` (``processing.gemma3_prompt``): from its first ``<start_of_image>`` to
its last ``<end_of_image>``, i.e. ``1 + num_crops`` sequences of ``<start_of_image>``, ``mm_tokens_per_image``
soft tokens and ``<end_of_image>``, with pan and scan's text between them (``"\\n\\n and here are some crops
to help you see better \\n\\n"``, ``"\\n\\n \\n\\n"``). The ``"\\n\\n"`` before and after, and pan and scan's
``"Here is the original image "``, are text outside the range, tokenized with the prompt's text around the
marker as transformers tokenizes it, so the prompt's ids equal transformers' ``input_ids``. A range's tokens
that are not soft tokens are text: the mapper gives each image's ``range_token_ids`` and ``soft_token_mask``
so the model can build one row per range token (its own embedding, or the tower's next soft-token row).

Pan and scan is the checkpoint's (``preprocessor_config.json``), overridden model-wide by
``mmjax.load(..., mm_processor_kwargs={"do_pan_and_scan": True, ...})``. A request's ``mm_processor_kwargs``
may turn it off, lower ``pan_and_scan_max_num_crops`` and change ``pan_and_scan_min_crop_size`` and
``pan_and_scan_min_ratio_to_activate``, never turn it on or raise the crop limit: the max tokens per image,
the KV budget and warm-up were sized for the model-wide settings.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image

from mmjax.processing.gemma3_config import PAN_AND_SCAN_KEYS, Gemma3ImageConfig, PanAndScan
from mmjax.processing.gemma3_crops import num_crops
from mmjax.processing.gemma3_image import process_image
from mmjax.processing.image_items import ImageItem, image_size, images_of
from mmjax.processing.gemma3_prompt import (
    ImageRun, ImageTokens, bidirectional_spans, image_run, marker_positions, soft_token_mask, splice_images,
)  # fmt: skip
from mmjax.registry import DecoderOnlyInputs, DummyData, InputContext, MultiModalInputs, PlaceholderRange



def image_tokens(ctx: InputContext) -> ImageTokens:
    """The image token ids and soft tokens per sequence, from the checkpoint's ``Gemma3Config``."""
    hf = ctx.get_hf_config()
    return ImageTokens(int(hf.boi_token_index), int(hf.eoi_token_index), int(hf.image_token_index),
                       int(hf.mm_tokens_per_image))


def model_image_config(ctx: InputContext) -> Gemma3ImageConfig:
    """The checkpoint's image settings with the model-wide ``mm_processor_kwargs`` pan and scan applied.

    Raises:
      ValueError: a model-wide value out of range, or a processor ``size`` that is not the tower's.
    """
    side = int(ctx.get_hf_config().vision_config.image_size)
    processor = ctx.get_hf_image_processor_config() or {"size": {"height": side, "width": side}}
    config = Gemma3ImageConfig.from_hf_dict(processor)
    if config.size != (side, side):
        raise ValueError(f"the image processor resizes to {config.size}, but the vision tower takes {side}x{side} "
                         f"images (vision_config.image_size)")
    model_kwargs = ctx.model_config.mm_processor_kwargs
    settings = config.pan_and_scan.override({k: model_kwargs.get(k) for k in PAN_AND_SCAN_KEYS},
                                            prefix="model-wide mm_processor_kwargs ")
    return dataclasses.replace(config, pan_and_scan=settings)


def request_pan_and_scan(model: PanAndScan, values: Mapping[str, Any]) -> PanAndScan:
    """``model``'s pan and scan with a request's ``mm_processor_kwargs`` (None: the model's), which may not
    turn it on or raise the crop limit.

    Raises:
      ValueError: naming the field: out of range, or beyond the model-wide settings.
    """
    settings = model.override(values)
    hint = " (set it model-wide with mmjax.load(..., mm_processor_kwargs={...}))"
    if settings.enabled and not model.enabled:
        raise ValueError(f"mm_processor_kwargs do_pan_and_scan=True, but pan and scan is off for this model; a "
                         f"request may only turn it off{hint}")
    if settings.enabled and settings.max_num_crops > model.max_num_crops:
        raise ValueError(f"mm_processor_kwargs pan_and_scan_max_num_crops={settings.max_num_crops} is above the "
                         f"model's {model.max_num_crops}; a request may only lower it{hint}")
    return settings


def image_config(ctx: InputContext, **request: Any) -> Gemma3ImageConfig:
    """The settings one request maps its images with: ``request`` holds its pan-and-scan kwargs (None: unset)."""
    config = model_image_config(ctx)
    return dataclasses.replace(config, pan_and_scan=request_pan_and_scan(config.pan_and_scan, request))






def image_runs(ctx: InputContext, images: Sequence[ImageItem], config: Gemma3ImageConfig) -> list[ImageRun]:
    """Each image's expansion (``gemma3_prompt.image_run``), from its size alone."""
    tokens, tokenizer = image_tokens(ctx), ctx.get_tokenizer()
    return [image_run(num_crops(*image_size(image), config.pan_and_scan), tokens, tokenizer) for image in images]


def _pan_and_scan_kwargs(do_pan_and_scan: bool | None, pan_and_scan_min_crop_size: int | None,
                         pan_and_scan_max_num_crops: int | None,
                         pan_and_scan_min_ratio_to_activate: float | None) -> dict[str, Any]:
    return dict(zip(PAN_AND_SCAN_KEYS, (do_pan_and_scan, pan_and_scan_min_crop_size, pan_and_scan_max_num_crops,
                                        pan_and_scan_min_ratio_to_activate)))


def map_images(ctx: InputContext, data: object, *, do_pan_and_scan: bool | None = None,
               pan_and_scan_min_crop_size: int | None = None, pan_and_scan_max_num_crops: int | None = None,
               pan_and_scan_min_ratio_to_activate: float | None = None) -> MultiModalInputs:
    """The image mapper. For ``N`` images, of ``n_i`` crops and placeholder ranges of ``L_i`` tokens:

    pixel_values: float32 ``[sum(1 + n_i), 3, S, S]``: each image, then its crops, image after image
    num_crops: int32 ``[N]``
    range_token_ids: int32 ``[sum(L_i)]``: each image's placeholder range's ids, image after image
    soft_token_mask: bool ``[sum(L_i)]``: which of them are soft tokens (the rest are text)
    """
    config = image_config(ctx, **_pan_and_scan_kwargs(do_pan_and_scan, pan_and_scan_min_crop_size,
                                                       pan_and_scan_max_num_crops, pan_and_scan_min_ratio_to_activate))
    tokens, tokenizer = image_tokens(ctx), ctx.get_tokenizer()
    mapped = [process_image(image, config) for image in images_of(data, "Gemma 3")]
    ranges = np.concatenate([np.asarray(image_run(m.num_crops, tokens, tokenizer).range_ids) for m in mapped])
    return MultiModalInputs(
        pixel_values=np.concatenate([m.pixel_values for m in mapped]),
        num_crops=np.asarray([m.num_crops for m in mapped], dtype=np.int32),
        range_token_ids=ranges.astype(np.int32),
        soft_token_mask=soft_token_mask(ranges, tokens.soft),
    )


def max_image_tokens(ctx: InputContext) -> int:
    """The longest placeholder range of one image under the model-wide settings: ``1 + max crops`` sequences
    (one without pan and scan) of ``mm_tokens_per_image + 2`` tokens and pan and scan's text between them."""
    most = model_image_config(ctx).pan_and_scan.most_crops
    return len(image_run(most, image_tokens(ctx), ctx.get_tokenizer()).range_ids)


def worst_case_image(config: Gemma3ImageConfig) -> Image.Image:
    """A black image cut into the most crops the settings allow (the tower's size without pan and scan)."""
    settings = config.pan_and_scan
    if not settings.enabled:
        return Image.new("RGB", config.size[::-1])
    side = settings.min_crop_size
    width = side * max(settings.max_num_crops, math.ceil(settings.min_ratio_to_activate))
    if num_crops(side, width, settings) != settings.max_num_crops:
        raise ValueError(f"no {side}x{width} image reaches {settings.max_num_crops} pan-and-scan crops: {settings}")
    return Image.new("RGB", (width, side))


def input_processor(ctx: InputContext, inputs: DecoderOnlyInputs, *, do_pan_and_scan: bool | None = None,
                    pan_and_scan_min_crop_size: int | None = None, pan_and_scan_max_num_crops: int | None = None,
                    pan_and_scan_min_ratio_to_activate: float | None = None) -> DecoderOnlyInputs:
    """Expand each ``<start_of_image>`` into its image's sequences (``gemma3_prompt.splice_images``) and record
    one placeholder range per image.

    Raises:
      ValueError: the prompt holds ``<image_soft_token>`` ids, or its ``<start_of_image>`` markers and images
        disagree in number (naming the positions); a pan-and-scan value the request may not ask for.
    """
    tokens, ids = image_tokens(ctx), inputs.prompt_token_ids
    raw = [i for i, t in enumerate(ids) if t == tokens.soft]
    if raw:
        raise ValueError(f"the prompt holds <image_soft_token> (id {tokens.soft}) at positions {raw[:8]}"
                         f"{' ...' if len(raw) > 8 else ''}; put one <start_of_image> per image instead, the soft "
                         f"tokens are inserted for it")
    data = inputs.multi_modal_data.get("image")
    if data is None:
        markers = marker_positions(ids, tokens.boi)
        if markers:
            raise ValueError(f"the prompt has {len(markers)} <start_of_image> marker(s) (id {tokens.boi}) at prompt "
                             f"positions {markers}, but no images were given; give one image per marker")
        return inputs
    config = image_config(ctx, **_pan_and_scan_kwargs(do_pan_and_scan, pan_and_scan_min_crop_size,
                                                       pan_and_scan_max_num_crops, pan_and_scan_min_ratio_to_activate))
    tokenizer = ctx.get_tokenizer()
    special = {int(i) for i, token in tokenizer.added_tokens_decoder.items() if token.special}
    runs = image_runs(ctx, images_of(data, "Gemma 3"), config)
    token_ids, ranges = splice_images(ids, runs, tokenizer, boi=tokens.boi,
                                      special_ids=special)
    placeholders = {"image": tuple(PlaceholderRange(offset, length) for offset, length in ranges)}
    return dataclasses.replace(inputs, prompt_token_ids=token_ids, multi_modal_placeholders=placeholders)


def dummy_data(ctx: InputContext, seq_len: int, mm_counts: Mapping[str, int]) -> DummyData:
    """``mm_counts["image"]`` images cut into the most crops (``worst_case_image``), each with its whole
    placeholder range (the max tokens), one after the other, then zeros up to ``seq_len``."""
    count = mm_counts.get("image", 0)
    if not count:
        return DummyData(prompt_token_ids=(0,) * seq_len)
    config = model_image_config(ctx)
    image = worst_case_image(config)
    run = image_runs(ctx, [image], config)[0].range_ids
    token_ids = list(run) * count
    placeholders = [PlaceholderRange(i * len(run), len(run)) for i in range(count)]
    token_ids += [0] * max(0, seq_len - len(token_ids))
    return DummyData(prompt_token_ids=token_ids, multi_modal_data={"image": [image] * count},
                     multi_modal_placeholders={"image": placeholders})


def encoder_input_variants(ctx: InputContext) -> list[MultiModalInputs]:
    """One (zero) input per crop count one image may have (0, and 2..max or 1 with pan and scan): every
    ``pixel_values`` shape the mapper returns for the engine, which maps each image alone (for warm-up)."""
    config, tokens, tokenizer = model_image_config(ctx), image_tokens(ctx), ctx.get_tokenizer()
    settings = config.pan_and_scan
    counts = [0] + (list(range(min(2, settings.max_num_crops), settings.max_num_crops + 1)) if settings.enabled else [])
    variants = []
    for crops in counts:
        ranges = np.asarray(image_run(crops, tokens, tokenizer).range_ids, dtype=np.int32)
        variants.append(MultiModalInputs(
            pixel_values=np.zeros((1 + crops, 3, *config.size), np.float32),
            num_crops=np.asarray([crops], np.int32),
            range_token_ids=ranges,
            soft_token_mask=soft_token_mask(ranges, tokens.soft),
        ))
    return variants


def prompt_bidirectional_spans(ctx: InputContext, token_ids: Sequence[int] | np.ndarray) -> list[tuple[int, int]]:
    """``(start, stop)`` of each run of soft tokens in a prompt: the blocks that attend both ways."""
    return bidirectional_spans(token_ids, image_tokens(ctx).soft)
