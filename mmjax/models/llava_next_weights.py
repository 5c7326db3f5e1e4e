"""LLaVA-NeXT checkpoints: LLaVA-1.5's weight table plus ``image_newline``, and ``load_llava_next``.

The tower, projector and decoder tensors are named exactly as in LLaVA-1.5
checkpoints (in all three published spellings, see ``llava_weights``); NeXT
adds one vector, ``image_newline`` (``model.image_newline`` in memory).
"""

from __future__ import annotations

import os

import jax.numpy as jnp
from flax import nnx

from mmjax.models.llava_next import LlavaNextConfig, LlavaNextForConditionalGeneration
from mmjax.models.llava_sharding import LLAVA_NEXT_PARTITION_RULES, llava_shardings
from mmjax.models.llava_weights import LLAVA_ALIASES, LLAVA_IGNORED, llava_table, read_hf_config
from mmjax.models.weights import PARAM, CheckpointReader, Target, expand_table, fill_state

LLAVA_NEXT_ALIASES: tuple[tuple[str, str], ...] = LLAVA_ALIASES + ((r"^image_newline$", "model.image_newline"),)

_IMAGE_NEWLINE = (("model.image_newline", "image_newline", PARAM),)


def llava_next_targets(cfg: LlavaNextConfig, model_paths: set) -> dict[str, Target]:
    """``{canonical HF tensor name: Target}`` for a model with these parameter paths."""
    repeats = {
        "model.vision_tower.encoder.layers.": cfg.llava.vision.num_layers,
        "model.language_model.layers.": cfg.llava.text.num_layers,
    }
    return expand_table(llava_table(cfg.llava) + _IMAGE_NEWLINE, repeats, model_paths)


def abstract_llava_next(cfg: LlavaNextConfig, dtype: jnp.dtype = jnp.float32) -> LlavaNextForConditionalGeneration:
    """The model with shapes and dtypes but no memory (``nnx.eval_shape``)."""
    return nnx.eval_shape(lambda: LlavaNextForConditionalGeneration(cfg, param_dtype=dtype, rngs=nnx.Rngs(0)))


def load_llava_next(path: str | os.PathLike, dtype: jnp.dtype = jnp.float32, *, mesh=None):
    """Load a LLaVA-NeXT checkpoint directory (llava-hf layout, e.g. llava-v1.6-mistral-7b-hf).

    ``mesh``: as for ``load_llava``; the weights are placed by ``LLAVA_NEXT_PARTITION_RULES``.

    Returns:
      ``(model, hf_config)``: the ``LlavaNextForConditionalGeneration`` and the
      transformers ``LlavaNextConfig`` it was built from.
    """
    hf_config = read_hf_config(path)
    cfg = LlavaNextConfig.from_hf(hf_config)
    abstract = abstract_llava_next(cfg, dtype)
    model_paths = {leaf_path for leaf_path, _ in nnx.to_flat_state(nnx.state(abstract, nnx.Param))}
    shardings = None
    if mesh is not None:
        shardings = llava_shardings(mesh, cfg.llava.text, model_paths, LLAVA_NEXT_PARTITION_RULES,
                                    vision_config=cfg.llava.vision)[1]
    with CheckpointReader(path, LLAVA_NEXT_ALIASES) as reader:
        model = fill_state(abstract, llava_next_targets(cfg, model_paths), reader, dtype, ignore=LLAVA_IGNORED,
                           shardings=shardings)
    return model, hf_config
