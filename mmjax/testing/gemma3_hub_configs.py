"""The JSON files of the ``google/gemma-3-*-it`` Hub repositories, for a tiny spec.

Key for key the files ``google/gemma-3-4b-it`` (``Gemma3ForConditionalGeneration``) and
``google/gemma-3-1b-it`` (``Gemma3ForCausalLM``) ship, with the spec's sizes and token ids in place of
the real ones and weights in float32. Both were written by transformers 4.50: the RoPE settings are spelled
``rope_theta`` (full attention), ``rope_local_base_freq`` (sliding) and ``rope_scaling`` (the full-attention
layers' scaling), which transformers 5 reads into ``rope_parameters``. Where the 4b file leaves a text field
to the class default, the tiny one spells it out (its sizes are not the defaults); the attention pattern is
given as ``layer_types``.
"""

from __future__ import annotations

from typing import Any

from mmjax.testing.gemma3_specs import TinyGemma3Spec, TinyGemma3TextSpec

IMAGENET_STANDARD = [0.5, 0.5, 0.5]
_VERSION = "4.50.0.dev0"


def text_config(spec: TinyGemma3TextSpec) -> dict[str, Any]:
    """The decoder's fields, as ``google/gemma-3-1b-it``'s ``config.json`` spells them."""
    ids = spec.token_ids
    config = {
        "attention_bias": False,
        "attention_dropout": 0.0,
        "attn_logit_softcapping": None,
        "bos_token_id": ids.bos,
        "eos_token_id": [ids.eos, ids.end_of_turn],
        "final_logit_softcapping": None,
        "head_dim": spec.head_dim,
        "hidden_activation": "gelu_pytorch_tanh",
        "hidden_size": spec.hidden_size,
        "initializer_range": 0.02,
        "intermediate_size": spec.intermediate_size,
        "layer_types": list(spec.layer_types),
        "max_position_embeddings": spec.max_position_embeddings,
        "model_type": "gemma3_text",
        "num_attention_heads": spec.num_heads,
        "num_hidden_layers": spec.num_layers,
        "num_key_value_heads": spec.num_kv_heads,
        "pad_token_id": ids.pad,
        "query_pre_attn_scalar": spec.query_pre_attn_scalar,
        "rms_norm_eps": spec.rms_norm_eps,
        "rope_local_base_freq": spec.rope_local_base_freq,
        "rope_scaling": None if spec.rope_scaling is None else dict(spec.rope_scaling),
        "rope_theta": spec.rope_theta,
        "sliding_window": spec.sliding_window,
        "tie_word_embeddings": spec.tie_word_embeddings,
        "use_cache": True,
        "vocab_size": spec.model_vocab_size,
    }
    return {**config, **spec.text_config}


def causal_lm_config(spec: TinyGemma3TextSpec) -> dict[str, Any]:
    """``config.json`` of the text-only checkpoint (``Gemma3ForCausalLM``)."""
    config = {"architectures": ["Gemma3ForCausalLM"], **text_config(spec), "cache_implementation": "hybrid"}
    return dict(sorted({**config, "torch_dtype": "float32", "transformers_version": _VERSION}.items()))


def model_config(spec: TinyGemma3Spec) -> dict[str, Any]:
    """``config.json`` of the multimodal checkpoint (``Gemma3ForConditionalGeneration``)."""
    ids = spec.token_ids
    text = {k: v for k, v in text_config(spec).items() if k not in ("bos_token_id", "eos_token_id", "pad_token_id")}
    vision = {
        "hidden_size": spec.vision_hidden_size, "image_size": spec.image_size,
        "intermediate_size": spec.vision_intermediate_size, "model_type": "siglip_vision_model",
        "num_attention_heads": spec.vision_heads, "num_hidden_layers": spec.vision_layers,
        "patch_size": spec.patch_size, "vision_use_head": False, **spec.vision_config,
    }  # fmt: skip
    return {
        "architectures": ["Gemma3ForConditionalGeneration"],
        "boi_token_index": ids.boi,
        "eoi_token_index": ids.eoi,
        "eos_token_id": [ids.eos, ids.end_of_turn],
        "image_token_index": ids.image_soft,
        "initializer_range": 0.02,
        "mm_tokens_per_image": spec.mm_tokens_per_image,
        "model_type": "gemma3",
        "text_config": text,
        "tie_word_embeddings": spec.tie_word_embeddings,
        "torch_dtype": "float32",
        "transformers_version": _VERSION,
        "vision_config": vision,
    }


def generation_config(spec: TinyGemma3TextSpec) -> dict[str, Any]:
    """``generation_config.json``: Gemma 3's sampling defaults, stopping at ``<eos>`` or ``<end_of_turn>``."""
    ids = spec.token_ids
    return {
        "bos_token_id": ids.bos, "cache_implementation": "hybrid", "do_sample": True,
        "eos_token_id": [ids.eos, ids.end_of_turn], "pad_token_id": ids.pad, "top_k": 64, "top_p": 0.95,
        "transformers_version": _VERSION,
    }  # fmt: skip


def preprocessor_config(spec: TinyGemma3Spec) -> dict[str, Any]:
    """``preprocessor_config.json``: the pan-and-scan settings null (the processor's defaults apply)."""
    config = {
        "do_convert_rgb": None, "do_normalize": True, "do_pan_and_scan": None, "do_rescale": True,
        "do_resize": True, "image_mean": IMAGENET_STANDARD, "image_processor_type": "Gemma3ImageProcessor",
        "image_seq_length": spec.mm_tokens_per_image, "image_std": IMAGENET_STANDARD,
        "pan_and_scan_max_num_crops": None, "pan_and_scan_min_crop_size": None,
        "pan_and_scan_min_ratio_to_activate": None, "processor_class": "Gemma3Processor", "resample": 2,
        "rescale_factor": 0.00392156862745098, "size": {"height": spec.image_size, "width": spec.image_size},
    }  # fmt: skip
    return {**config, **spec.processor}


def processor_config(spec: TinyGemma3Spec) -> dict[str, Any]:
    """``processor_config.json``: the soft tokens an image becomes."""
    return {"image_seq_length": spec.mm_tokens_per_image, "processor_class": "Gemma3Processor"}


def chat_template_json(template: str) -> dict[str, str]:
    """``chat_template.json``."""
    return {"chat_template": template}
