"""LLaVA-1.5 as one ``ModelFamily`` value, and its loader and saver."""

from __future__ import annotations

import os
from types import MappingProxyType

import jax.numpy as jnp
from flax import nnx
from transformers import PretrainedConfig

from mmjax.models.common.family import ModelFamily, load_checkpoint, save_checkpoint
from mmjax.models.llava.config import LlavaConfig
from mmjax.models.llava.model import LlavaForConditionalGeneration
from mmjax.models.llava.sharding import LLAVA_PARTITION_RULES, partition_rules_for
from mmjax.models.llava.weights import LLAVA_ALIASES, LLAVA_IGNORED, llava_layer_repeats, llava_table

LLAVA = ModelFamily(
    name="llava",
    model_class=LlavaForConditionalGeneration,
    config_from_hf=LlavaConfig.from_hf,
    text_config=lambda cfg: cfg.text,
    weight_table=llava_table,
    layer_repeats=llava_layer_repeats,
    aliases=LLAVA_ALIASES,
    ignored=LLAVA_IGNORED,
    partition_rules=lambda cfg, model_axis: partition_rules_for(
        LLAVA_PARTITION_RULES, cfg.text.num_kv_heads, model_axis, cfg.vision),
    trainable_groups=MappingProxyType({"projector": ("multi_modal_projector/",)}),
)


def load_llava(
    path: str | os.PathLike, dtype: jnp.dtype = jnp.float32, *, mesh=None
) -> tuple[LlavaForConditionalGeneration, PretrainedConfig]:
    """Load a LLaVA-1.5 checkpoint directory (llava-hf layout); see ``load_checkpoint``."""
    return load_checkpoint(LLAVA, path, dtype, mesh=mesh)


def save_llava(model: nnx.Module, hf_config: PretrainedConfig, path: str | os.PathLike, *,
               max_shard_bytes: int = 2**30) -> str:
    """Write ``model`` as a llava-hf checkpoint; see ``save_checkpoint``."""
    return save_checkpoint(LLAVA, model, hf_config, path, max_shard_bytes=max_shard_bytes)
