"""Gemma 3 as two ``ModelFamily`` values: with images (``Gemma3ForConditionalGeneration``) and text only."""

from __future__ import annotations

from types import MappingProxyType

from jax.sharding import PartitionSpec as P

from mmjax.models.common.decoder_sharding import DECODER_PARTITION_RULES, REPLICATED
from mmjax.models.common.family import ModelFamily, PartitionRules
from mmjax.models.gemma3.config import Gemma3Config, Gemma3TextConfig
from mmjax.models.gemma3.model import Gemma3ForCausalLM, Gemma3ForConditionalGeneration
from mmjax.models.gemma3.weights import GEMMA3_ALIASES, GEMMA3_IGNORED, gemma3_table, gemma3_text_table
from mmjax.models.llava.sharding import partition_rules_for

GEMMA3_PARTITION_RULES: tuple[tuple[str, P], ...] = (
    (r"^vision_tower/", REPLICATED),
    (r"^multi_modal_projector/", REPLICATED),
) + DECODER_PARTITION_RULES


def gemma3_partition_rules(cfg: Gemma3Config, model_axis: int) -> PartitionRules:
    """The decoder's Megatron split; the SigLIP tower split like LLaVA's CLIP when its heads allow."""
    return partition_rules_for(GEMMA3_PARTITION_RULES, cfg.text.num_kv_heads, model_axis, cfg.vision)


GEMMA3 = ModelFamily(
    name="gemma3",
    model_class=Gemma3ForConditionalGeneration,
    config_from_hf=Gemma3Config.from_hf,
    text_config=lambda cfg: cfg.text,
    weight_table=gemma3_table,
    layer_repeats=lambda cfg: {"model.vision_tower.encoder.layers.": cfg.vision.num_layers,
                               "model.language_model.layers.": cfg.text.num_layers},
    aliases=GEMMA3_ALIASES,
    ignored=GEMMA3_IGNORED,
    partition_rules=gemma3_partition_rules,
    trainable_groups=MappingProxyType({"projector": ("multi_modal_projector/",)}),
)

GEMMA3_TEXT = ModelFamily(
    name="gemma3_text",
    model_class=Gemma3ForCausalLM,
    config_from_hf=Gemma3TextConfig.from_hf,
    text_config=lambda cfg: cfg,
    weight_table=gemma3_text_table,
    layer_repeats=lambda cfg: {"model.layers.": cfg.num_layers},
    ignored=GEMMA3_IGNORED,
    partition_rules=lambda cfg, model_axis: partition_rules_for(DECODER_PARTITION_RULES, cfg.num_kv_heads,
                                                                model_axis),
)
