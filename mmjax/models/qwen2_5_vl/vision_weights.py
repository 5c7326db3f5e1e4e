"""Qwen2.5-VL vision tower: the HF -> mmjax weight-name rows (for ``mmjax.models.weights.expand_table``).

Checkpoints spell the tower ``visual.*`` (as published) or ``model.visual.*``
(transformers 5 in memory and ``save_pretrained``); ``VISION_ALIASES`` rewrites
the first to the second, the canonical spelling of ``vision_rows``. A bare
``Qwen2_5_VisionTransformerPretrainedModel`` state dict has no prefix
(``hf_prefix=""``).
"""

from __future__ import annotations

from mmjax.models.qwen2_5_vl.vision import Qwen2_5_VisionConfig
from mmjax.models.common.weights import CONV3D, LINEAR, RMS_NORM, LeafRule, Target, expand_table

#: ``(regex, replacement)`` from the published spelling to the canonical one.
VISION_ALIASES: tuple[tuple[str, str], ...] = ((r"^visual\.", "model.visual."),)

HF_PREFIX = "model.visual."


def vision_rows(hf_prefix: str = HF_PREFIX, our_prefix: str = "") -> tuple[tuple[str, str, tuple[LeafRule, ...]], ...]:
    """``(HF module, our module, kind)`` rows of the tower; ``{i}`` rows repeat per block.

    Args:
      hf_prefix: the tower's prefix in the checkpoint (``"model.visual."``; ``""`` for a bare tower).
      our_prefix: the tower's path in our model (e.g. ``"visual/"``; ``""`` for a bare tower).
    """
    h, o = hf_prefix, our_prefix
    return (
        (h + "patch_embed.proj", o + "patch_embed/proj", CONV3D),
        (h + "blocks.{i}.norm1", o + "blocks/{i}/norm1", RMS_NORM),
        (h + "blocks.{i}.attn.qkv", o + "blocks/{i}/attn/qkv", LINEAR),
        (h + "blocks.{i}.attn.proj", o + "blocks/{i}/attn/proj", LINEAR),
        (h + "blocks.{i}.norm2", o + "blocks/{i}/norm2", RMS_NORM),
        (h + "blocks.{i}.mlp.gate_proj", o + "blocks/{i}/mlp/gate_proj", LINEAR),
        (h + "blocks.{i}.mlp.up_proj", o + "blocks/{i}/mlp/up_proj", LINEAR),
        (h + "blocks.{i}.mlp.down_proj", o + "blocks/{i}/mlp/down_proj", LINEAR),
        (h + "merger.ln_q", o + "merger/ln_q", RMS_NORM),
        (h + "merger.mlp.0", o + "merger/fc1", LINEAR),  # mlp.1 is the GELU
        (h + "merger.mlp.2", o + "merger/fc2", LINEAR),
    )


def vision_repeats(cfg: Qwen2_5_VisionConfig, hf_prefix: str = HF_PREFIX) -> dict[str, int]:
    """``expand_table``'s repeat counts of the ``{i}`` rows."""
    return {hf_prefix + "blocks.": cfg.depth}


def vision_targets(cfg: Qwen2_5_VisionConfig, model_paths: set, hf_prefix: str = HF_PREFIX,
                   our_prefix: str = "") -> dict[str, Target]:
    """``{canonical HF tensor name: Target}`` of the tower's parameters."""
    return expand_table(vision_rows(hf_prefix, our_prefix), vision_repeats(cfg, hf_prefix), model_paths)
