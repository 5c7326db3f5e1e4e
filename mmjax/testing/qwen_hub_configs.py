"""The JSON files of the Qwen-VL Instruct Hub repositories, for a tiny spec.

Key for key the files ``Qwen/Qwen2.5-VL-7B-Instruct`` and ``Qwen/Qwen3-VL-4B-Instruct``
ship, with the spec's sizes and token ids in place of the real ones, and weights in
float32. Qwen2.5-VL's ``config.json`` is flat (the text fields at the top level,
``rope_scaling: {"type": "mrope", ...}``, ``in_chans`` in the vision config), as it
was written by transformers 4.41; Qwen3-VL's is nested, as written by 4.57
(``rope_scaling`` and ``rope_theta`` inside ``text_config``, the vision config's
``model_type`` ``"qwen3_vl"``). transformers 5 reads both and writes neither (see
``layout="save_pretrained"``).
"""

from __future__ import annotations

from typing import Any

from mmjax.testing.qwen_specs import TinyQwen2_5VLSpec, TinyQwen3VLSpec, TinyQwenSpec

OPENAI_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def model_config(spec: TinyQwenSpec) -> dict[str, Any]:
    """``config.json``."""
    return _qwen2_5_vl_config(spec) if isinstance(spec, TinyQwen2_5VLSpec) else _qwen3_vl_config(spec)


def _qwen2_5_vl_config(spec: TinyQwen2_5VLSpec) -> dict[str, Any]:
    ids = spec.token_ids
    vision = {
        "depth": spec.vision_depth, "hidden_act": "silu", "hidden_size": spec.vision_hidden_size,
        "intermediate_size": spec.vision_intermediate_size, "num_heads": spec.vision_heads, "in_chans": 3,
        "out_hidden_size": spec.hidden_size, "patch_size": spec.patch_size, "spatial_merge_size": spec.merge_size,
        "spatial_patch_size": spec.patch_size, "window_size": spec.window_size,
        "fullatt_block_indexes": list(spec.fullatt_block_indexes), "tokens_per_second": spec.tokens_per_second,
        "temporal_patch_size": spec.temporal_patch_size, **spec.vision_config,
    }  # fmt: skip
    config = {
        "architectures": ["Qwen2_5_VLForConditionalGeneration"],
        "attention_dropout": 0.0,
        "bos_token_id": ids.endoftext,
        "eos_token_id": ids.im_end,
        "vision_start_token_id": ids.vision_start,
        "vision_end_token_id": ids.vision_end,
        "vision_token_id": ids.vision_pad,
        "image_token_id": ids.image_pad,
        "video_token_id": ids.video_pad,
        "hidden_act": "silu",
        "hidden_size": spec.hidden_size,
        "initializer_range": 0.02,
        "intermediate_size": spec.intermediate_size,
        "max_position_embeddings": spec.max_position_embeddings,
        "max_window_layers": spec.num_layers,
        "model_type": "qwen2_5_vl",
        "num_attention_heads": spec.num_heads,
        "num_hidden_layers": spec.num_layers,
        "num_key_value_heads": spec.num_kv_heads,
        "rms_norm_eps": spec.rms_norm_eps,
        "rope_theta": spec.rope_theta,
        "sliding_window": 32768,
        "tie_word_embeddings": spec.tie_word_embeddings,
        "torch_dtype": "float32",
        "transformers_version": "4.41.2",
        "use_cache": True,
        "use_sliding_window": False,
        "vision_config": vision,
        "rope_scaling": {"type": "mrope", "mrope_section": list(spec.mrope_section)},
        "vocab_size": spec.model_vocab_size,
    }
    return {**config, **spec.text_config}


def _qwen3_vl_config(spec: TinyQwen3VLSpec) -> dict[str, Any]:
    ids = spec.token_ids
    text = {
        "attention_bias": False, "attention_dropout": 0.0, "bos_token_id": ids.endoftext, "dtype": "float32",
        "eos_token_id": ids.im_end, "head_dim": spec.head_dim, "hidden_act": "silu", "hidden_size": spec.hidden_size,
        "initializer_range": 0.02, "intermediate_size": spec.intermediate_size,
        "max_position_embeddings": spec.max_position_embeddings, "model_type": "qwen3_vl_text",
        "num_attention_heads": spec.num_heads, "num_hidden_layers": spec.num_layers,
        "num_key_value_heads": spec.num_kv_heads, "rms_norm_eps": spec.rms_norm_eps,
        "rope_scaling": {"mrope_interleaved": True, "mrope_section": list(spec.mrope_section), "rope_type": "default"},
        "rope_theta": spec.rope_theta, "tie_word_embeddings": spec.tie_word_embeddings, "use_cache": True,
        "vocab_size": spec.model_vocab_size, **spec.text_config,
    }  # fmt: skip
    vision = {
        "deepstack_visual_indexes": list(spec.deepstack_visual_indexes), "depth": spec.vision_depth,
        "hidden_act": "gelu_pytorch_tanh", "hidden_size": spec.vision_hidden_size, "in_channels": 3,
        "initializer_range": 0.02, "intermediate_size": spec.vision_intermediate_size, "model_type": "qwen3_vl",
        "num_heads": spec.vision_heads, "num_position_embeddings": spec.num_position_embeddings,
        "out_hidden_size": spec.hidden_size, "patch_size": spec.patch_size, "spatial_merge_size": spec.merge_size,
        "temporal_patch_size": spec.temporal_patch_size, **spec.vision_config,
    }  # fmt: skip
    return {
        "architectures": ["Qwen3VLForConditionalGeneration"],
        "image_token_id": ids.image_pad,
        "model_type": "qwen3_vl",
        "text_config": text,
        "tie_word_embeddings": spec.tie_word_embeddings,
        "transformers_version": "4.57.0.dev0",
        "video_token_id": ids.video_pad,
        "vision_config": vision,
        "vision_end_token_id": ids.vision_end,
        "vision_start_token_id": ids.vision_start,
    }


def generation_config(spec: TinyQwenSpec) -> dict[str, Any]:
    """``generation_config.json``: the Instruct models' sampling defaults, stopping at ``<|im_end|>``."""
    ids = spec.token_ids
    stop = {"bos_token_id": ids.endoftext, "pad_token_id": ids.endoftext, "do_sample": True}
    eos = {"eos_token_id": [ids.im_end, ids.endoftext]}
    if isinstance(spec, TinyQwen2_5VLSpec):
        sampling = {"repetition_penalty": 1.05, "temperature": 0.1, "top_p": 0.001, "top_k": 1}
        return {**stop, **eos, **sampling, "transformers_version": "4.37.0"}
    sampling = {"top_k": 20, "top_p": 0.8, "repetition_penalty": 1.0, "temperature": 0.7}
    return {**stop, **eos, **sampling, "transformers_version": "4.56.0"}


def preprocessor_config(spec: TinyQwenSpec) -> dict[str, Any]:
    """``preprocessor_config.json``: Qwen2.5-VL spells the pixel budget min/max_pixels, Qwen3-VL ``size``."""
    geometry = {"patch_size": spec.patch_size, "temporal_patch_size": spec.temporal_patch_size}
    if isinstance(spec, TinyQwen2_5VLSpec):
        return {
            "min_pixels": spec.min_pixels, "max_pixels": spec.max_pixels, **geometry, "merge_size": spec.merge_size,
            "image_mean": OPENAI_CLIP_MEAN, "image_std": OPENAI_CLIP_STD,
            "image_processor_type": "Qwen2VLImageProcessor", "processor_class": "Qwen2_5_VLProcessor",
        }  # fmt: skip
    return {
        "size": {"longest_edge": spec.max_pixels, "shortest_edge": spec.min_pixels}, **geometry,
        "merge_size": spec.merge_size, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
        "processor_class": "Qwen3VLProcessor", "image_processor_type": "Qwen2VLImageProcessorFast",
    }  # fmt: skip


def video_preprocessor_config(spec: TinyQwenSpec) -> dict[str, Any]:
    """``video_preprocessor_config.json``: the image file's fields with the video budget and class."""
    config = preprocessor_config(spec)
    del config["image_processor_type"]
    if isinstance(spec, TinyQwen2_5VLSpec):
        config.update(min_pixels=spec.video_min_pixels, max_pixels=spec.video_max_pixels)
        return {**config, "video_processor_type": "Qwen2VLVideoProcessor"}
    config["size"] = {"longest_edge": spec.video_max_pixels, "shortest_edge": spec.video_min_pixels}
    return {**config, "video_processor_type": "Qwen3VLVideoProcessor"}


def chat_template_json(template: str) -> dict[str, str]:
    """``chat_template.json``."""
    return {"chat_template": template}
