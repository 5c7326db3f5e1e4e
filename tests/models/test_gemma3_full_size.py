"""The published google/gemma-3-4b-it config: what mmjax reads from it, and our abstract model has
transformers' parameters, shape for shape (nothing allocated: ``nnx.eval_shape`` and torch's meta device)."""

from __future__ import annotations

import json
from mmjax.models.gemma3 import GEMMA3, Gemma3Config
from mmjax.models.gemma3.weights import GEMMA3_ALIASES
from mmjax.registry.config import load_hf_config
from full_size_checks import assert_parameters_match

# google/gemma-3-4b-it's config.json as published (written by transformers 4.50); the rest are defaults.
PUBLISHED_4B_CONFIG = {
    "architectures": ["Gemma3ForConditionalGeneration"], "boi_token_index": 255999, "eoi_token_index": 256000,
    "eos_token_id": [1, 106], "image_token_index": 262144, "initializer_range": 0.02, "mm_tokens_per_image": 256,
    "model_type": "gemma3",
    "text_config": {"hidden_size": 2560, "intermediate_size": 10240, "model_type": "gemma3_text",
                    "num_hidden_layers": 34, "rope_scaling": {"factor": 8.0, "rope_type": "linear"},
                    "sliding_window": 1024},
    "torch_dtype": "bfloat16", "transformers_version": "4.50.0.dev0",
    "vision_config": {"hidden_size": 1152, "image_size": 896, "intermediate_size": 4304,
                      "model_type": "siglip_vision_model", "num_attention_heads": 16, "num_hidden_layers": 27,
                      "patch_size": 14, "vision_use_head": False},
}  # fmt: skip


def test_the_published_4b_config_reads_as_gemma_3_4b(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(PUBLISHED_4B_CONFIG))
    hf_config = load_hf_config(tmp_path)
    cfg = Gemma3Config.from_hf(hf_config)
    text = cfg.text
    assert (text.num_layers, text.num_heads, text.num_kv_heads, text.head_dim) == (34, 8, 4, 256)
    assert [i for i in range(34) if text.window_of(i) is None] == [5, 11, 17, 23, 29]  # one global in six
    assert {text.window_of(i) for i in range(34)} == {1024, None}
    assert (text.rope_theta, text.rope_type, text.rope_scaling) == (1e6, "linear", (("factor", 8.0),))
    assert text.local_rope_theta == 1e4 and text.query_pre_attn_scalar == 256 and text.tie_word_embeddings
    assert (cfg.tokens_per_image, cfg.patches_per_side, cfg.pool) == (256, 64, 4)

    import torch
    from transformers import Gemma3ForConditionalGeneration

    with torch.device("meta"):
        reference = Gemma3ForConditionalGeneration(hf_config)
    torch_shapes = {name: tuple(p.shape) for name, p in reference.named_parameters()}
    assert 4.2e9 < assert_parameters_match(GEMMA3, cfg, GEMMA3_ALIASES, torch_shapes) < 4.4e9  # "4B"
