"""The weight rows of the Llama-family decoder (``common.decoder``), shared by every family that uses it."""

from __future__ import annotations

from mmjax.models.common.decoder_config import DecoderConfig
from mmjax.models.common.weights import EMBEDDING, LINEAR, RMS_NORM, LeafRule


def decoder_rows(cfg: DecoderConfig, hf_prefix: str = "model.language_model.", our_prefix: str = "language_model/",
                 lm_head: str = "lm_head") -> tuple[tuple[str, str, tuple[LeafRule, ...]], ...]:
    """``(HF module, our module, kind)`` rows of the decoder; the q/k norms' only with ``qk_norm``, the LM
    head's only when embeddings are untied."""
    h, o = hf_prefix, our_prefix
    rows = (
        (h + "embed_tokens", o + "embed_tokens", EMBEDDING),
        (h + "layers.{i}.self_attn.q_proj", o + "layers/{i}/self_attn/q_proj", LINEAR),
        (h + "layers.{i}.self_attn.k_proj", o + "layers/{i}/self_attn/k_proj", LINEAR),
        (h + "layers.{i}.self_attn.v_proj", o + "layers/{i}/self_attn/v_proj", LINEAR),
        (h + "layers.{i}.self_attn.o_proj", o + "layers/{i}/self_attn/o_proj", LINEAR),
        (h + "layers.{i}.mlp.gate_proj", o + "layers/{i}/mlp/gate_proj", LINEAR),
        (h + "layers.{i}.mlp.up_proj", o + "layers/{i}/mlp/up_proj", LINEAR),
        (h + "layers.{i}.mlp.down_proj", o + "layers/{i}/mlp/down_proj", LINEAR),
        (h + "layers.{i}.input_layernorm", o + "layers/{i}/input_layernorm", RMS_NORM),
        (h + "layers.{i}.post_attention_layernorm", o + "layers/{i}/post_attention_layernorm", RMS_NORM),
        (h + "norm", o + "norm", RMS_NORM),
    )
    if cfg.qk_norm:
        rows += tuple((h + f"layers.{{i}}.self_attn.{n}", o + f"layers/{{i}}/self_attn/{n}", RMS_NORM)
                      for n in ("q_norm", "k_norm"))
    return rows + (() if cfg.tie_word_embeddings else ((lm_head, o + "lm_head", LINEAR),))
