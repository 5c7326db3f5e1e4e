"""LLaVA-NeXT as one ``ModelFamily`` value: LLaVA-1.5's weight table plus ``image_newline``.

The tower, projector and decoder tensors are named exactly as in LLaVA-1.5
checkpoints (in all three published spellings, see ``mmjax.models.llava.weights``);
NeXT adds one vector, ``image_newline`` (``model.image_newline`` in memory).
"""

from __future__ import annotations

import os
from types import MappingProxyType

import jax.numpy as jnp
from transformers import PretrainedConfig

from mmjax.models.common.family import ModelFamily, WeightRow, load_checkpoint
from mmjax.models.common.weights import PARAM
from mmjax.models.llava.sharding import LLAVA_NEXT_PARTITION_RULES, partition_rules_for
from mmjax.models.llava.weights import LLAVA_ALIASES, LLAVA_IGNORED, llava_layer_repeats, llava_table
from mmjax.models.llava_next.model import LlavaNextConfig, LlavaNextForConditionalGeneration

LLAVA_NEXT_ALIASES: tuple[tuple[str, str], ...] = LLAVA_ALIASES + ((r"^image_newline$", "model.image_newline"),)

_IMAGE_NEWLINE: tuple[WeightRow, ...] = (("model.image_newline", "image_newline", PARAM),)

LLAVA_NEXT = ModelFamily(
    name="llava_next",
    model_class=LlavaNextForConditionalGeneration,
    config_from_hf=LlavaNextConfig.from_hf,
    text_config=lambda cfg: cfg.llava.text,
    weight_table=lambda cfg: llava_table(cfg.llava) + _IMAGE_NEWLINE,
    layer_repeats=lambda cfg: llava_layer_repeats(cfg.llava),
    aliases=LLAVA_NEXT_ALIASES,
    ignored=LLAVA_IGNORED,
    partition_rules=lambda cfg, model_axis: partition_rules_for(
        LLAVA_NEXT_PARTITION_RULES, cfg.llava.text.num_kv_heads, model_axis, cfg.llava.vision),
    trainable_groups=MappingProxyType({"projector": ("multi_modal_projector/",)}),
)


def load_llava_next(
    path: str | os.PathLike, dtype: jnp.dtype = jnp.float32, *, mesh=None
) -> tuple[LlavaNextForConditionalGeneration, PretrainedConfig]:
    """Load a LLaVA-NeXT checkpoint directory (llava-hf layout); see ``load_checkpoint``."""
    return load_checkpoint(LLAVA_NEXT, path, dtype, mesh=mesh)
