"""LLaVA checkpoints: the HF -> mmjax weight-name table (``mmjax.models.llava.LLAVA`` loads with it).

Names appear in three spellings, all rewritten to transformers 5's in-memory
names (the canonical spelling of the table below):

- published llava-hf: ``language_model.model.*``, ``language_model.lm_head.*``,
  ``vision_tower.vision_model.*``, ``multi_modal_projector.*``;
- transformers 5 ``save_pretrained``: the same but ``vision_tower.*``;
- in memory / other writers: ``model.language_model.*``, ``model.vision_tower.*``,
  ``model.multi_modal_projector.*``, ``lm_head.*``.
"""

from __future__ import annotations

from mmjax.models.common.weights import CONV2D, EMBEDDING, LAYER_NORM, LINEAR, PARAM, RMS_NORM
from mmjax.models.llava.config import LlavaConfig

#: ``(regex, replacement)``, applied in order, from any published spelling to the canonical one.
LLAVA_ALIASES: tuple[tuple[str, str], ...] = (
    (r"^language_model\.lm_head\.", "lm_head."),
    (r"^language_model\.model\.", "model.language_model."),
    (r"^(model\.)?vision_tower\.vision_model\.", "model.vision_tower."),
    (r"^vision_tower\.", "model.vision_tower."),
    (r"^multi_modal_projector\.", "model.multi_modal_projector."),
)

#: Buffers some exporters saved although they are not parameters.
LLAVA_IGNORED = (r"\.position_ids$", r"rotary_emb\.inv_freq$")

_V, _T = "model.vision_tower.", "model.language_model."

#: (HF module, our module, kind). ``{i}`` rows repeat per layer.
LLAVA_TABLE = (
    (_V + "embeddings.class_embedding", "vision_tower/embeddings/class_embedding", PARAM),
    (_V + "embeddings.patch_embedding", "vision_tower/embeddings/patch_embedding", CONV2D),
    (_V + "embeddings.position_embedding", "vision_tower/embeddings/position_embedding", EMBEDDING),
    (_V + "pre_layrnorm", "vision_tower/pre_layrnorm", LAYER_NORM),
    (_V + "encoder.layers.{i}.self_attn.q_proj", "vision_tower/layers/{i}/self_attn/q_proj", LINEAR),
    (_V + "encoder.layers.{i}.self_attn.k_proj", "vision_tower/layers/{i}/self_attn/k_proj", LINEAR),
    (_V + "encoder.layers.{i}.self_attn.v_proj", "vision_tower/layers/{i}/self_attn/v_proj", LINEAR),
    (_V + "encoder.layers.{i}.self_attn.out_proj", "vision_tower/layers/{i}/self_attn/out_proj", LINEAR),
    (_V + "encoder.layers.{i}.layer_norm1", "vision_tower/layers/{i}/layer_norm1", LAYER_NORM),
    (_V + "encoder.layers.{i}.layer_norm2", "vision_tower/layers/{i}/layer_norm2", LAYER_NORM),
    (_V + "encoder.layers.{i}.mlp.fc1", "vision_tower/layers/{i}/mlp/fc1", LINEAR),
    (_V + "encoder.layers.{i}.mlp.fc2", "vision_tower/layers/{i}/mlp/fc2", LINEAR),
    (_V + "post_layernorm", "vision_tower/post_layernorm", LAYER_NORM),
    ("model.multi_modal_projector.linear_1", "multi_modal_projector/linear_1", LINEAR),
    ("model.multi_modal_projector.linear_2", "multi_modal_projector/linear_2", LINEAR),
    (_T + "embed_tokens", "language_model/embed_tokens", EMBEDDING),
    (_T + "layers.{i}.self_attn.q_proj", "language_model/layers/{i}/self_attn/q_proj", LINEAR),
    (_T + "layers.{i}.self_attn.k_proj", "language_model/layers/{i}/self_attn/k_proj", LINEAR),
    (_T + "layers.{i}.self_attn.v_proj", "language_model/layers/{i}/self_attn/v_proj", LINEAR),
    (_T + "layers.{i}.self_attn.o_proj", "language_model/layers/{i}/self_attn/o_proj", LINEAR),
    (_T + "layers.{i}.mlp.gate_proj", "language_model/layers/{i}/mlp/gate_proj", LINEAR),
    (_T + "layers.{i}.mlp.up_proj", "language_model/layers/{i}/mlp/up_proj", LINEAR),
    (_T + "layers.{i}.mlp.down_proj", "language_model/layers/{i}/mlp/down_proj", LINEAR),
    (_T + "layers.{i}.input_layernorm", "language_model/layers/{i}/input_layernorm", RMS_NORM),
    (_T + "layers.{i}.post_attention_layernorm", "language_model/layers/{i}/post_attention_layernorm", RMS_NORM),
    (_T + "norm", "language_model/norm", RMS_NORM),
)
_LM_HEAD = (("lm_head", "language_model/lm_head", LINEAR),)


def llava_table(cfg: LlavaConfig) -> tuple:
    """The table for one config: the LM head row only when embeddings are untied."""
    return LLAVA_TABLE + (() if cfg.text.tie_word_embeddings else _LM_HEAD)


def llava_layer_repeats(cfg: LlavaConfig) -> dict[str, int]:
    """How often the table's ``{i}`` rows repeat: the tower's and the decoder's layers."""
    return {"model.vision_tower.encoder.layers.": cfg.vision.num_layers,
            "model.language_model.layers.": cfg.text.num_layers}
