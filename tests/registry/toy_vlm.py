"""A toy multimodal model registered through every registry hook.

Used by the registry tests. Each ``<image>`` becomes
``(image_size // patch_size) ** 2`` placeholder tokens; the count is computed
once, in ``image_token_count``, and used by every hook.
"""

from __future__ import annotations

import dataclasses
import os

from flax import nnx
from PIL import Image
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

from mmjax.registry import (
    INPUT_REGISTRY,
    MULTIMODAL_REGISTRY,
    DecoderOnlyInputs,
    DummyData,
    InputContext,
    PlaceholderRange,
    SupportsMultiModal,
)


IMAGE_SIZE, PATCH_SIZE = 30, 6  # 25 tokens per image


def hf_config(image_token_id: int = 383) -> LlavaConfig:
    """A tiny LLaVA-shaped config: 30x30 images in 6x6 patches, a 384-token vocabulary."""
    return LlavaConfig(
        vision_config=CLIPVisionConfig(image_size=IMAGE_SIZE, patch_size=PATCH_SIZE, hidden_size=16,
                                       num_hidden_layers=1, num_attention_heads=2, intermediate_size=20),
        text_config=LlamaConfig(vocab_size=384, hidden_size=16, num_hidden_layers=1,
                                num_attention_heads=2, intermediate_size=20, max_position_embeddings=128),
        image_token_id=image_token_id,
        architectures=["ToyVLM"],
    )


def image_token_count(ctx: InputContext) -> int:
    vision = ctx.get_hf_config().vision_config
    return (vision.image_size // vision.patch_size) ** 2


def image_token_id(ctx: InputContext) -> int:
    return ctx.get_hf_config().image_token_id


def expand_image_tokens(ctx: InputContext, inputs: DecoderOnlyInputs) -> DecoderOnlyInputs:
    n, marker = image_token_count(ctx), image_token_id(ctx)
    ids, ranges = [], []
    for token in inputs.prompt_token_ids:
        if token == marker:
            ranges.append(PlaceholderRange(len(ids), n))
            ids.extend([marker] * n)
        else:
            ids.append(token)
    images = inputs.multi_modal_data.get("image")
    num_images = 0 if images is None else (len(images) if isinstance(images, list) else 1)
    if len(ranges) != num_images:
        raise ValueError(f"the prompt has {len(ranges)} <image> markers but {num_images} images")
    placeholders = {"image": tuple(ranges)} if images is not None else {}
    return dataclasses.replace(inputs, prompt_token_ids=tuple(ids), multi_modal_placeholders=placeholders)


def dummy_data(ctx: InputContext, seq_len: int, mm_counts) -> DummyData:
    n, marker, num_images = image_token_count(ctx), image_token_id(ctx), mm_counts["image"]
    ids = [marker] * (n * num_images)
    ids += [0] * max(0, seq_len - len(ids))
    size = ctx.get_hf_config().vision_config.image_size
    images = [Image.new("RGB", (size, size), color=(255, 255, 255))] * num_images
    ranges = tuple(PlaceholderRange(i * n, n) for i in range(num_images))
    return DummyData(prompt_token_ids=ids, multi_modal_data={"image": images},
                     multi_modal_placeholders={"image": ranges})


@MULTIMODAL_REGISTRY.register_image_input_mapper()
@MULTIMODAL_REGISTRY.register_max_image_tokens(image_token_count)
@INPUT_REGISTRY.register_dummy_data(dummy_data)
@INPUT_REGISTRY.register_input_processor(expand_image_tokens)
class ToyVLM(nnx.Module, SupportsMultiModal):
    def __init__(self, *, rngs: nnx.Rngs):
        self.proj = nnx.Linear(3, 4, rngs=rngs)


def make_toy_checkpoint(path: str | os.PathLike) -> str:
    """Write a checkpoint directory in the llava-hf layout (config, tokenizer, image processor).

    The toy model has no weights: it exists to exercise the registry.
    """
    from transformers import CLIPImageProcessorPil

    from mmjax.testing.tokenizer import make_tiny_tokenizer

    path = os.fspath(path)
    tokenizer = make_tiny_tokenizer(384)
    tokenizer.save_pretrained(path)
    CLIPImageProcessorPil(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    ).save_pretrained(path)
    hf_config(tokenizer.convert_tokens_to_ids("<image>")).save_pretrained(path)
    return path
