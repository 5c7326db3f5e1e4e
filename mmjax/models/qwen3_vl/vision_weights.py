"""Qwen3-VL vision tower: the HF -> mmjax weight-name rows (for ``mmjax.models.weights.expand_table``).

Checkpoints spell the tower ``model.visual.*`` (as published and in
transformers 5) or ``visual.*`` (some exporters); ``VISION_ALIASES`` rewrites
the second to the first, the canonical spelling of ``vision_rows``. A bare
``Qwen3VLVisionModel`` state dict has no prefix (``hf_prefix=""``).
"""

from __future__ import annotations

from mmjax.models.qwen3_vl.vision import Qwen3VisionConfig
from mmjax.models.common.weights import CONV3D, EMBEDDING, LAYER_NORM, LINEAR, LeafRule, Target, expand_table

#: ``(regex, replacement)`` from other spellings to the canonical one.
VISION_ALIASES: tuple[tuple[str, str], ...] = ((r"^visual\.", "model.visual."),)

HF_PREFIX = "model.visual."


def vision_rows(hf_prefix: str = HF_PREFIX, our_prefix: str = "") -> tuple[tuple[str, str, tuple[LeafRule, ...]], ...]:
    """``(HF module, our module, kind)`` rows of the tower; ``{i}`` rows repeat per block or DeepStack merger.

    Args:
      hf_prefix: the tower's prefix in the checkpoint (``"model.visual."``; ``""`` for a bare tower).
      our_prefix: the tower's path in our model (e.g. ``"visual/"``; ``""`` for a bare tower).
    """
    h, o = hf_prefix, our_prefix
    mergers = [(h + "merger.", o + "merger/"), (h + "deepstack_merger_list.{i}.", o + "deepstack_merger_list/{i}/")]
    return (
        (h + "patch_embed.proj", o + "patch_embed/proj", CONV3D),
        (h + "pos_embed", o + "pos_embed", EMBEDDING),
        (h + "blocks.{i}.norm1", o + "blocks/{i}/norm1", LAYER_NORM),
        (h + "blocks.{i}.attn.qkv", o + "blocks/{i}/attn/qkv", LINEAR),
        (h + "blocks.{i}.attn.proj", o + "blocks/{i}/attn/proj", LINEAR),
        (h + "blocks.{i}.norm2", o + "blocks/{i}/norm2", LAYER_NORM),
        (h + "blocks.{i}.mlp.linear_fc1", o + "blocks/{i}/mlp/linear_fc1", LINEAR),
        (h + "blocks.{i}.mlp.linear_fc2", o + "blocks/{i}/mlp/linear_fc2", LINEAR),
    ) + tuple(
        row
        for hf, ours in mergers
        for row in (
            (hf + "norm", ours + "norm", LAYER_NORM),
            (hf + "linear_fc1", ours + "linear_fc1", LINEAR),
            (hf + "linear_fc2", ours + "linear_fc2", LINEAR),
        )
    )


def vision_repeats(cfg: Qwen3VisionConfig, hf_prefix: str = HF_PREFIX) -> dict[str, int]:
    """``expand_table``'s repeat counts of the ``{i}`` rows."""
    return {hf_prefix + "blocks.": cfg.depth, hf_prefix + "deepstack_merger_list.": len(cfg.deepstack_visual_indexes)}


def vision_targets(cfg: Qwen3VisionConfig, model_paths: set, hf_prefix: str = HF_PREFIX,
                   our_prefix: str = "") -> dict[str, Target]:
    """``{canonical HF tensor name: Target}`` of the tower's parameters."""
    return expand_table(vision_rows(hf_prefix, our_prefix), vision_repeats(cfg, hf_prefix), model_paths)
