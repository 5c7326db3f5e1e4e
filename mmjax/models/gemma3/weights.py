"""Gemma 3 checkpoints: the HF -> mmjax weight-name tables, for images and for text only.

Names appear in two spellings, both rewritten to transformers 5's in-memory names (the tables'):
as published on the Hub and as transformers 5 still saves them (``language_model.model.*``,
``vision_tower.vision_model.*``, ``multi_modal_projector.*``); in memory (``model.language_model.*``,
``model.vision_tower.*``, ``model.multi_modal_projector.*``, ``lm_head``). The text-only
``Gemma3ForCausalLM`` names its decoder ``model.*``.
"""

from __future__ import annotations

from mmjax.models.common.decoder_weights import decoder_rows
from mmjax.models.common.siglip_weights import siglip_rows
from mmjax.models.common.weights import PARAM, RMS_NORM
from mmjax.models.gemma3.config import Gemma3Config, Gemma3TextConfig

GEMMA3_ALIASES: tuple[tuple[str, str], ...] = (
    (r"^language_model\.lm_head\.", "lm_head."),
    (r"^language_model\.model\.", "model.language_model."),
    (r"^(model\.)?vision_tower\.vision_model\.", "model.vision_tower."),
    (r"^vision_tower\.", "model.vision_tower."),
    (r"^multi_modal_projector\.", "model.multi_modal_projector."),
)
#: Buffers some exporters saved although they are not parameters.
GEMMA3_IGNORED = (r"\.position_ids$", r"rotary_emb\.\w*inv_freq$", r"embed_scale$")


def gemma3_decoder_rows(cfg: Gemma3TextConfig, hf_prefix: str, lm_head: str = "lm_head") -> tuple:
    """The Llama-family decoder's rows (with the q/k norms) and Gemma's norms around the MLP."""
    extra = tuple((hf_prefix + f"layers.{{i}}.{n}", f"language_model/layers/{{i}}/{n}", RMS_NORM)
                  for n in ("pre_feedforward_layernorm", "post_feedforward_layernorm"))
    return decoder_rows(cfg, hf_prefix, lm_head=lm_head) + extra


def gemma3_table(cfg: Gemma3Config) -> tuple:
    projector = (
        ("model.multi_modal_projector.mm_input_projection_weight", "multi_modal_projector/mm_input_projection_weight",
         PARAM),
        ("model.multi_modal_projector.mm_soft_emb_norm", "multi_modal_projector/mm_soft_emb_norm", RMS_NORM),
    )
    return siglip_rows() + projector + gemma3_decoder_rows(cfg.text, "model.language_model.")


def gemma3_text_table(cfg: Gemma3TextConfig) -> tuple:
    return gemma3_decoder_rows(cfg, "model.")
