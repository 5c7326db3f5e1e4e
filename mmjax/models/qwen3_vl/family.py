"""Qwen3-VL as one ``ModelFamily`` value: its weight table, partition rules and trainable groups.

Checkpoints name tensors as transformers 5 keeps them in memory (the table's):
``model.language_model.*`` (the decoder, q/k norms included), ``model.visual.*``
(the tower, DeepStack mergers included), ``lm_head`` (absent when tied); the
older spellings ``model.layers.*`` / ``visual.*`` some exporters write are aliases.
"""

from __future__ import annotations

from types import MappingProxyType

from mmjax.models.common.decoder_sharding import REPLICATED, decoder_partition_rules
from mmjax.models.common.decoder_weights import decoder_rows
from mmjax.models.common.family import ModelFamily, PartitionRules, WeightRow
from mmjax.models.qwen3_vl.config import Qwen3VLConfig
from mmjax.models.qwen3_vl.model import Qwen3VLForConditionalGeneration
from mmjax.models.qwen3_vl.vision_weights import HF_PREFIX, vision_repeats, vision_rows

QWEN3_VL_ALIASES: tuple[tuple[str, str], ...] = (
    (r"^model\.(embed_tokens|layers|norm)\.", r"model.language_model.\1."),
    (r"^visual\.", HF_PREFIX),
)
QWEN3_VL_IGNORED = (r"rotary_emb\.inv_freq$",)


def qwen3_vl_table(cfg: Qwen3VLConfig) -> tuple[WeightRow, ...]:
    return vision_rows(HF_PREFIX, "visual/") + decoder_rows(cfg.text)


def qwen3_vl_layer_repeats(cfg: Qwen3VLConfig) -> dict[str, int]:
    return {**vision_repeats(cfg.vision, HF_PREFIX), "model.language_model.layers.": cfg.text.num_layers}


def qwen3_vl_partition_rules(cfg: Qwen3VLConfig, model_axis: int) -> PartitionRules:
    """The decoder's Megatron split (``common.decoder_sharding``); the vision tower replicated (its
    attention's q, k and v are one fused projection, which a column split would cut across)."""
    return ((r"^visual/", REPLICATED),) + decoder_partition_rules(cfg.text.num_kv_heads, model_axis)


QWEN3_VL = ModelFamily(
    name="qwen3_vl",
    model_class=Qwen3VLForConditionalGeneration,
    config_from_hf=Qwen3VLConfig.from_hf,
    text_config=lambda cfg: cfg.text,
    weight_table=qwen3_vl_table,
    layer_repeats=qwen3_vl_layer_repeats,
    aliases=QWEN3_VL_ALIASES,
    ignored=QWEN3_VL_IGNORED,
    partition_rules=qwen3_vl_partition_rules,
    trainable_groups=MappingProxyType({"projector": ("visual/merger/", "visual/deepstack_merger_list/")}),
)
