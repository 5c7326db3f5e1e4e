"""Tiny random LLaVA-NeXT checkpoints, written by transformers itself, in the llava-hf layout.

As ``checkpoints.make_tiny_llava_checkpoint``, plus what anyres needs: the
model config's ``image_grid_pinpoints``, a ``LlavaNextImageProcessorPil``
config (no torchvision) and the processor's ``patch_size`` and strategy, so
transformers' ``LlavaNextProcessor`` loads from the directory too.

Default geometry: 30x30 tiles of 6x6 patches (25 features per tile), the
llava-v1.6 pinpoints scaled from 336 to 30: ``(30, 60) (60, 30) (60, 60)
(90, 30) (30, 90)``; at most 5 tiles and 25 + 10 * 10 + 10 = 135 tokens per image.
"""

from __future__ import annotations

import os
from typing import Any

from mmjax.testing.checkpoints import _randomize
from mmjax.testing.tokenizer import IMAGE_TOKEN, LLAVA_NEXT_CHAT_TEMPLATE, make_tiny_tokenizer

TINY_PINPOINTS = ((30, 60), (60, 30), (60, 60), (90, 30), (30, 90))


def make_tiny_llava_next_checkpoint(
    path: str | os.PathLike,
    *,
    text_model_type: str = "llama",
    hidden_size: int = 40,
    num_heads: int = 5,
    num_kv_heads: int = 1,
    intermediate_size: int = 52,
    num_layers: int = 2,
    vocab_size: int = 384,
    max_position_embeddings: int = 1024,
    tie_word_embeddings: bool = False,
    vision_hidden_size: int = 28,
    vision_heads: int = 4,
    vision_intermediate_size: int = 44,
    vision_layers: int = 3,
    image_size: int = 30,
    patch_size: int = 6,
    image_grid_pinpoints: tuple[tuple[int, int], ...] = TINY_PINPOINTS,
    vision_feature_layer: int | list[int] = -2,
    text_config: dict[str, Any] | None = None,
    seed: int = 0,
) -> str:
    """Write a tiny random LLaVA-NeXT checkpoint (weights, tokenizer, processor) to ``path``; return ``path``."""
    import torch  # the reference implementation; only test code needs it
    from transformers import AutoConfig, LlavaNextConfig, LlavaNextForConditionalGeneration

    path = os.fspath(path)
    tokenizer = make_tiny_tokenizer(vocab_size, chat_template=LLAVA_NEXT_CHAT_TEMPLATE)
    text_fields = dict(
        vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=intermediate_size,
        num_hidden_layers=num_layers, num_attention_heads=num_heads, num_key_value_heads=num_kv_heads,
        max_position_embeddings=max_position_embeddings, tie_word_embeddings=tie_word_embeddings,
        pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    if text_model_type == "mistral":
        text_fields["sliding_window"] = None  # Mistral's default is 4096
    text = AutoConfig.for_model(text_model_type, **{**text_fields, **(text_config or {})})
    vision = AutoConfig.for_model(
        "clip_vision_model", hidden_size=vision_hidden_size, intermediate_size=vision_intermediate_size,
        num_hidden_layers=vision_layers, num_attention_heads=vision_heads, image_size=image_size,
        patch_size=patch_size, projection_dim=16,
    )  # fmt: skip
    config = LlavaNextConfig(
        text_config=text, vision_config=vision, image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        image_grid_pinpoints=[list(p) for p in image_grid_pinpoints], vision_feature_layer=vision_feature_layer,
        vision_feature_select_strategy="default", image_seq_length=(image_size // patch_size) ** 2,
        tie_word_embeddings=tie_word_embeddings,
    )  # fmt: skip
    torch.manual_seed(seed)
    model = LlavaNextForConditionalGeneration(config).eval()
    _randomize(model, seed)
    model.save_pretrained(path)
    processor(tokenizer, image_size, patch_size, image_grid_pinpoints).save_pretrained(path)
    return path


def processor(tokenizer, image_size: int, patch_size: int, pinpoints: tuple[tuple[int, int], ...]):
    """transformers' ``LlavaNextProcessor`` (PIL image backend) for this geometry."""
    from transformers import LlavaNextImageProcessorPil, LlavaNextProcessor

    image_processor = LlavaNextImageProcessorPil(
        image_grid_pinpoints=[list(p) for p in pinpoints],
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size},
    )  # fmt: skip
    return LlavaNextProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=patch_size,
        vision_feature_select_strategy="default", num_additional_image_tokens=1,
    )  # fmt: skip
