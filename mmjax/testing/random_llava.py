"""A small random LLaVA-1.5 checkpoint written by mmjax itself: no torch, no download.

The README's main job runs on it when no real checkpoint is given. It has the
real geometry (336x336 images in 14x14 patches: 576 image tokens) and tiny
widths, so it runs in seconds on a CPU. Its weights are random: it shows the
pipeline, not an answer.
"""

from __future__ import annotations

import os

from flax import nnx
from transformers import CLIPImageProcessorPil, CLIPVisionConfig, LlamaConfig, PreTrainedTokenizerFast
from transformers import LlavaConfig as HFLlavaConfig

from mmjax.models.llava import LlavaConfig, LlavaForConditionalGeneration
from mmjax.models.llava import save_llava
from mmjax.testing.tokenizer import IMAGE_TOKEN, make_tiny_tokenizer

#: CLIP's normalisation constants, as in the llava-hf image-processor configs.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def make_random_llava_checkpoint(
    path: str | os.PathLike,
    *,
    image_size: int = 336,
    patch_size: int = 14,
    vision_hidden: int = 64,
    text_hidden: int = 96,
    num_layers: int = 2,
    vocab_size: int = 384,
    seed: int = 0,
    max_shard_bytes: int = 2**30,
    text_config: dict | None = None,
    vision_config: dict | None = None,
    llava_config: dict | None = None,
    tokenizer: PreTrainedTokenizerFast | None = None,
) -> str:
    """Write a random LLaVA-1.5 checkpoint in the llava-hf layout to ``path``; return ``path``.

    ``text_config`` / ``vision_config`` override fields of the Llama / CLIP configs
    (e.g. ``{"num_attention_heads": 8}``), ``llava_config`` those of the LLaVA config
    (e.g. ``{"vision_feature_layer": -1}``); ``tokenizer`` replaces the default tiny one
    (its ids must be below ``vocab_size``).
    """
    path = os.fspath(path)
    tokenizer = make_tiny_tokenizer(vocab_size) if tokenizer is None else tokenizer
    vision = dict(hidden_size=vision_hidden, intermediate_size=2 * vision_hidden, num_hidden_layers=num_layers,
                  num_attention_heads=4, image_size=image_size, patch_size=patch_size, projection_dim=vision_hidden)
    text = dict(vocab_size=vocab_size, hidden_size=text_hidden, intermediate_size=2 * text_hidden + 8,
                num_hidden_layers=num_layers, num_attention_heads=4, num_key_value_heads=2,
                max_position_embeddings=2048, bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    hf_config = HFLlavaConfig(
        vision_config=CLIPVisionConfig(**{**vision, **(vision_config or {})}),
        text_config=LlamaConfig(**{**text, **(text_config or {})}),
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        architectures=["LlavaForConditionalGeneration"],
        **(llava_config or {}),
    )
    model = LlavaForConditionalGeneration(LlavaConfig.from_hf(hf_config), rngs=nnx.Rngs(seed))
    save_llava(model, hf_config, path, max_shard_bytes=max_shard_bytes)
    tokenizer.save_pretrained(path)
    CLIPImageProcessorPil(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size},
        image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD),
    ).save_pretrained(path)
    return path
