"""LLaVA checkpoints: the HF -> mmjax weight-name table, and ``load_llava``.

Names appear in three spellings, all rewritten to transformers 5's in-memory
names (the canonical spelling of the table below):

- published llava-hf: ``language_model.model.*``, ``language_model.lm_head.*``,
  ``vision_tower.vision_model.*``, ``multi_modal_projector.*``;
- transformers 5 ``save_pretrained``: the same but ``vision_tower.*``;
- in memory / other writers: ``model.language_model.*``, ``model.vision_tower.*``,
  ``model.multi_modal_projector.*``, ``lm_head.*``.
"""

from __future__ import annotations

import os

import jax.numpy as jnp
from flax import nnx

from mmjax.models.llava import LlavaConfig, LlavaForConditionalGeneration
from mmjax.models.llava_sharding import llava_shardings
from mmjax.models.weights import (
    CONV2D, EMBEDDING, LAYER_NORM, LINEAR, PARAM, RMS_NORM, CheckpointReader, Target, expand_table, fill_state,
    save_state,
)  # fmt: skip

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


def llava_targets(cfg: LlavaConfig, model_paths: set) -> dict[str, Target]:
    """``{canonical HF tensor name: Target}`` for a model with these parameter paths."""
    repeats = {
        "model.vision_tower.encoder.layers.": cfg.vision.num_layers,
        "model.language_model.layers.": cfg.text.num_layers,
    }
    return expand_table(llava_table(cfg), repeats, model_paths)


def read_hf_config(path: str | os.PathLike):
    """The checkpoint's transformers config (``config.json``), read from disk only.

    A missing file, invalid JSON or a wrong-typed field raises naming the file
    and the field (``mmjax.registry.config.load_hf_config``).
    """
    from mmjax.registry.config import load_hf_config

    return load_hf_config(path)


def abstract_llava(cfg: LlavaConfig, dtype: jnp.dtype = jnp.float32) -> LlavaForConditionalGeneration:
    """The model with shapes and dtypes but no memory (``nnx.eval_shape``)."""
    return nnx.eval_shape(lambda: LlavaForConditionalGeneration(cfg, param_dtype=dtype, rngs=nnx.Rngs(0)))


def load_llava(path: str | os.PathLike, dtype: jnp.dtype = jnp.float32, *, mesh=None):
    """Load a LLaVA-1.5 checkpoint directory (llava-hf layout).

    Args:
      path: a directory with ``config.json`` and ``model.safetensors`` or a
        sharded ``model.safetensors.index.json``.
      dtype: parameter dtype, e.g. ``jnp.float32`` or ``jnp.bfloat16``.
      mesh: None (one device), or a ``("data", "model")`` mesh or what
        ``mmjax.sharding.make_mesh`` takes: each weight is placed by
        ``LLAVA_PARTITION_RULES`` (``llava_sharding``) as it is read.

    Returns:
      ``(model, hf_config)``: the ``LlavaForConditionalGeneration`` and the
      transformers ``LlavaConfig`` it was built from.
    """
    hf_config = read_hf_config(path)
    cfg = LlavaConfig.from_hf(hf_config)
    abstract = abstract_llava(cfg, dtype)
    model_paths = {leaf_path for leaf_path, _ in nnx.to_flat_state(nnx.state(abstract, nnx.Param))}
    targets = llava_targets(cfg, model_paths)
    shardings = None if mesh is None else llava_shardings(mesh, cfg.text, model_paths, vision_config=cfg.vision)[1]
    with CheckpointReader(path, LLAVA_ALIASES) as reader:
        model = fill_state(abstract, targets, reader, dtype, ignore=LLAVA_IGNORED, shardings=shardings)
    return model, hf_config


def save_llava(
    model: LlavaForConditionalGeneration, hf_config, path: str | os.PathLike, *, max_shard_bytes: int = 2**30
) -> str:
    """Write ``model`` as a llava-hf checkpoint (``config.json`` + safetensors) that
    transformers and ``load_llava`` both read. Tokenizer and image processor are
    the caller's to add. Returns ``path``."""
    path = os.fspath(path)
    os.makedirs(path, exist_ok=True)
    cfg = model.config
    model_paths = {leaf_path for leaf_path, _ in nnx.to_flat_state(nnx.state(model, nnx.Param))}
    save_state(model, llava_targets(cfg, model_paths), path, max_shard_bytes=max_shard_bytes)
    hf_config.save_pretrained(path)
    return path
