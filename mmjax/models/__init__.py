"""Flax NNX models (CLIP, Llama, LLaVA-1.5, LLaVA-NeXT) and their Hugging Face weight loaders.

``load_llava(path, dtype)`` reads a llava-hf checkpoint directory; ``forward``
is the pure, jitted ``(graphdef, state, input_ids, positions, pixel_values)
-> logits`` to call after ``graphdef, state = nnx.split(model)``.
"""

from mmjax.models.attend import Attend, dense_causal_attention
from mmjax.models.clip import CLIPVisionConfig, CLIPVisionTower
from mmjax.models.llama import DecoderConfig, LlamaForCausalLM
from mmjax.models.llava import LlavaConfig, LlavaForConditionalGeneration, forward, merge_image_features
from mmjax.models.llava_next import LlavaNextForConditionalGeneration
from mmjax.models.llava_next_weights import load_llava_next
from mmjax.models.llava_weights import load_llava, save_llava

__all__ = [
    "Attend",
    "CLIPVisionConfig",
    "CLIPVisionTower",
    "DecoderConfig",
    "LlamaForCausalLM",
    "LlavaConfig",
    "LlavaForConditionalGeneration",
    "LlavaNextForConditionalGeneration",
    "dense_causal_attention",
    "forward",
    "load_llava",
    "load_llava_next",
    "merge_image_features",
    "save_llava",
]
