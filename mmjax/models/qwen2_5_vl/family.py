"""Qwen2.5-VL as one ``ModelFamily`` value: its weight table, partition rules and trainable groups.

Checkpoints name tensors in two spellings, both rewritten to transformers 5's
in-memory names (the table's): as published on the Hub and as transformers 5
still saves them, ``model.embed_tokens``, ``model.layers.*``, ``model.norm``,
``visual.*``, ``lm_head``; in memory, ``model.language_model.*``, ``model.visual.*``.
"""

from __future__ import annotations

from types import MappingProxyType

from mmjax.models.common.decoder_weights import decoder_rows
from mmjax.models.common.family import ModelFamily, PartitionRules, WeightRow
from mmjax.models.common.decoder_sharding import REPLICATED, decoder_partition_rules
from mmjax.models.qwen2_5_vl.config import Qwen2_5_VLConfig
from mmjax.models.qwen2_5_vl.model import Qwen2_5_VLForConditionalGeneration
from mmjax.models.qwen2_5_vl.vision_weights import vision_rows

QWEN2_5_VL_ALIASES: tuple[tuple[str, str], ...] = (
    (r"^model\.(embed_tokens|layers|norm)\.", r"model.language_model.\1."),
    (r"^visual\.", "model.visual."),
)
QWEN2_5_VL_IGNORED = (r"rotary_emb\.inv_freq$",)

def qwen2_5_vl_table(cfg: Qwen2_5_VLConfig) -> tuple[WeightRow, ...]:
    return vision_rows("model.visual.", "visual/") + decoder_rows(cfg.text)


def qwen2_5_vl_partition_rules(cfg: Qwen2_5_VLConfig, model_axis: int) -> PartitionRules:
    """The decoder's Megatron split (``common.decoder_sharding``); the vision tower replicated (its
    attention's q, k and v are one fused projection, which a column split would cut across)."""
    return ((r"^visual/", REPLICATED),) + decoder_partition_rules(cfg.text.num_kv_heads, model_axis)


QWEN2_5_VL = ModelFamily(
    name="qwen2_5_vl",
    model_class=Qwen2_5_VLForConditionalGeneration,
    config_from_hf=Qwen2_5_VLConfig.from_hf,
    text_config=lambda cfg: cfg.text,
    weight_table=qwen2_5_vl_table,
    layer_repeats=lambda cfg: {"model.visual.blocks.": cfg.vision.depth,
                               "model.language_model.layers.": cfg.text.num_layers},
    aliases=QWEN2_5_VL_ALIASES,
    ignored=QWEN2_5_VL_IGNORED,
    partition_rules=qwen2_5_vl_partition_rules,
    trainable_groups=MappingProxyType({"projector": ("visual/merger/",)}),
)
