"""Flax NNX vision-language models, one package per family, shared parts in ``common``.

``mmjax.models.architectures.ARCHITECTURES`` maps each Hugging Face ``architectures``
name to its ``ModelFamily`` (config, class, weight table, partition rules, trainable
groups); ``load_checkpoint(family, path, dtype)`` reads any of them. Each family's
``forward`` is the pure, jitted ``(graphdef, state, input_ids, positions, ...) -> logits``
to call after ``graphdef, state = nnx.split(model)``.
"""

from mmjax.models.architectures import ARCHITECTURES, family_for, family_of
from mmjax.models.common.attend import Attend, dense_causal_attention
from mmjax.models.common.clip import CLIPVisionConfig, CLIPVisionTower
from mmjax.models.common.decoder import LlamaForCausalLM
from mmjax.models.common.decoder_config import DecoderConfig
from mmjax.models.common.family import ModelFamily, load_checkpoint, save_checkpoint
from mmjax.models.llava import LLAVA, LlavaConfig, LlavaForConditionalGeneration, load_llava, save_llava
from mmjax.models.llava_next import LLAVA_NEXT, LlavaNextForConditionalGeneration, load_llava_next

__all__ = [
    "ARCHITECTURES",
    "Attend",
    "CLIPVisionConfig",
    "CLIPVisionTower",
    "DecoderConfig",
    "LLAVA",
    "LLAVA_NEXT",
    "LlamaForCausalLM",
    "LlavaConfig",
    "LlavaForConditionalGeneration",
    "LlavaNextForConditionalGeneration",
    "ModelFamily",
    "dense_causal_attention",
    "family_for",
    "family_of",
    "load_checkpoint",
    "load_llava",
    "load_llava_next",
    "save_checkpoint",
    "save_llava",
]
