"""Full-size LLaVA-1.5 configs: our abstract model has transformers' parameters, shape for shape.

Nothing is allocated: our side is built with ``nnx.eval_shape``, transformers'
on ``torch.device("meta")``.
"""

from __future__ import annotations

import json

import pytest

from mmjax.models.llava import LlavaConfig
from mmjax.models.llava import LLAVA
from mmjax.models.llava.weights import LLAVA_ALIASES
from mmjax.registry.config import load_hf_config as read_hf_config
from full_size_checks import assert_parameters_match

# The published llava-hf/llava-1.5-{7b,13b}-hf text configs (Vicuna v1.5).
TEXT_SIZES = {
    "7b": dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, intermediate_size=11008),
    "13b": dict(hidden_size=5120, num_hidden_layers=40, num_attention_heads=40, intermediate_size=13824),
}
# CLIP ViT-L/14-336
VISION = dict(
    hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
    image_size=336, patch_size=14, projection_dim=768,
)  # fmt: skip


def _hf_config(size: str):
    from transformers import CLIPVisionConfig, LlamaConfig
    from transformers import LlavaConfig as HFLlavaConfig

    text = LlamaConfig(
        **TEXT_SIZES[size], vocab_size=32064, max_position_embeddings=4096, rms_norm_eps=1e-5, pad_token_id=32001
    )
    return HFLlavaConfig(
        text_config=text, vision_config=CLIPVisionConfig(**VISION), image_token_index=32000,
        vision_feature_layer=-2, vision_feature_select_strategy="default", projector_hidden_act="gelu",
    )  # fmt: skip


def _torch_shapes(hf_config) -> dict[str, tuple[int, ...]]:
    import torch
    from transformers import LlavaForConditionalGeneration

    with torch.device("meta"):
        model = LlavaForConditionalGeneration(hf_config)
    return {name: tuple(p.shape) for name, p in model.named_parameters()}


@pytest.mark.parametrize("size", ["7b", "13b"])
def test_parameter_count_and_shapes_match_transformers(size):
    hf_config = _hf_config(size)
    cfg = LlavaConfig.from_hf(hf_config)
    assert cfg.image_tokens_per_image == 576
    count = assert_parameters_match(LLAVA, cfg, LLAVA_ALIASES, _torch_shapes(hf_config))
    print(f"llava-1.5-{size}: {count:,} parameters")


# llava-hf/llava-1.5-7b-hf's config.json as published (written by transformers 4.36).
PUBLISHED_7B_CONFIG = {
    "architectures": ["LlavaForConditionalGeneration"], "ignore_index": -100, "image_token_index": 32000,
    "model_type": "llava", "pad_token_id": 32001, "projector_hidden_act": "gelu",
    "text_config": {
        "_name_or_path": "lmsys/vicuna-7b-v1.5", "architectures": ["LlamaForCausalLM"],
        "max_position_embeddings": 4096, "model_type": "llama", "rms_norm_eps": 1e-05,
        "torch_dtype": "float16", "vocab_size": 32064,
    },
    "tie_word_embeddings": False, "torch_dtype": "float16", "transformers_version": "4.36.0.dev0",
    "vision_config": {
        "hidden_size": 1024, "image_size": 336, "intermediate_size": 4096, "model_type": "clip_vision_model",
        "num_attention_heads": 16, "num_hidden_layers": 24, "patch_size": 14, "projection_dim": 768,
        "vocab_size": 32000,
    },
    "vision_feature_layer": -2, "vision_feature_select_strategy": "default", "vocab_size": 32064,
}  # fmt: skip


def test_published_7b_config_file_reads_as_the_code_built_config(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(PUBLISHED_7B_CONFIG))
    assert LlavaConfig.from_hf(read_hf_config(tmp_path)) == LlavaConfig.from_hf(_hf_config("7b"))
