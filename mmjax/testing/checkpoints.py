"""Tiny random LLaVA checkpoints, written by transformers itself, in the llava-hf layout.

No model hub is reachable where the tests run, so a checkpoint is made on the
spot: transformers' ``LlavaForConditionalGeneration`` with a tiny config, every
parameter re-drawn from a seeded generator, then ``save_pretrained`` beside a
tokenizer and a CLIP image-processor config. mmjax loads it through the same
code path as a real checkpoint.

Default dimensions are mutually distinct so that a transposed or swapped axis
cannot go unnoticed: text width 40, 5 heads of 8, 1 KV head, MLP 52, vocab 384;
vision width 28, 4 heads of 7, MLP 44, 3 layers, 30x30 images of 6x6 patches
(25 patches + CLS).
"""

from __future__ import annotations

import os
from typing import Any

from mmjax.testing.tokenizer import IMAGE_TOKEN, make_tiny_tokenizer


def make_tiny_llava_checkpoint(
    path: str | os.PathLike,
    *,
    text_model_type: str = "llama",
    hidden_size: int = 40,
    num_heads: int = 5,
    num_kv_heads: int = 1,
    head_dim: int | None = None,
    intermediate_size: int = 52,
    num_layers: int = 2,
    vocab_size: int = 384,
    tie_word_embeddings: bool = False,
    vision_hidden_size: int = 28,
    vision_heads: int = 4,
    vision_intermediate_size: int = 44,
    vision_layers: int = 3,
    image_size: int = 30,
    patch_size: int = 6,
    vision_feature_layer: int | list[int] = -2,
    vision_feature_select_strategy: str = "default",
    text_config: dict[str, Any] | None = None,
    vision_config: dict[str, Any] | None = None,
    llava_config: dict[str, Any] | None = None,
    seed: int = 0,
    shard: bool = False,
) -> str:
    """Write a tiny random LLaVA checkpoint to ``path`` and return ``path``.

    ``text_config``, ``vision_config`` and ``llava_config`` are extra fields
    applied last (e.g. ``{"rope_parameters": {...}}``, ``{"hidden_act": "gelu"}``).
    With ``shard=True`` the weights are split over several files with a
    ``model.safetensors.index.json``.
    """
    import torch  # the reference implementation; only test code needs it
    from transformers import AutoConfig, LlavaConfig, LlavaForConditionalGeneration

    path = os.fspath(path)
    tokenizer = make_tiny_tokenizer(vocab_size)
    image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    text_fields = dict(
        vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=intermediate_size,
        num_hidden_layers=num_layers, num_attention_heads=num_heads, num_key_value_heads=num_kv_heads,
        head_dim=head_dim, tie_word_embeddings=tie_word_embeddings, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    if text_model_type == "mistral":
        text_fields["sliding_window"] = None  # Mistral's default is 4096
    text = AutoConfig.for_model(text_model_type, **{**text_fields, **(text_config or {})})
    vision_fields = dict(
        hidden_size=vision_hidden_size, intermediate_size=vision_intermediate_size,
        num_hidden_layers=vision_layers, num_attention_heads=vision_heads,
        image_size=image_size, patch_size=patch_size, projection_dim=16,
    )  # fmt: skip
    vision = AutoConfig.for_model("clip_vision_model", **{**vision_fields, **(vision_config or {})})
    llava_fields = dict(
        image_token_index=image_token_id,
        vision_feature_layer=vision_feature_layer,
        vision_feature_select_strategy=vision_feature_select_strategy,
        image_seq_length=(image_size // patch_size) ** 2 + (vision_feature_select_strategy == "full"),
        tie_word_embeddings=tie_word_embeddings,
    )
    config = LlavaConfig(text_config=text, vision_config=vision, **{**llava_fields, **(llava_config or {})})
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).eval()
    _randomize(model, seed)
    model.save_pretrained(path, max_shard_size="60KB" if shard else "10GB")
    tokenizer.save_pretrained(path)
    _image_processor(image_size).save_pretrained(path)
    return path


def _randomize(model, seed: int) -> None:
    """Re-draw every parameter so that no weight is zero, one or identity.

    transformers' init leaves norms at 1 and biases at 0, which would let a
    swapped scale/bias or a missing bias go unnoticed.
    """
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():  # tied parameters appear once
            noise = torch.randn(param.shape, generator=generator)
            if param.ndim >= 2:  # matrices, embeddings, conv kernels: unit-variance outputs
                param.copy_(noise * param[0].numel() ** -0.5)
            elif name.endswith(".weight"):  # the only 1-D weights are norm scales
                param.copy_(1.0 + 0.2 * noise)
            else:
                param.copy_(0.2 * noise)  # biases, class embedding


def _image_processor(image_size: int):
    try:  # the PIL backend needs no torchvision
        from transformers import CLIPImageProcessorPil as processor_class
    except ImportError:
        from transformers import CLIPImageProcessor as processor_class
    return processor_class(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
