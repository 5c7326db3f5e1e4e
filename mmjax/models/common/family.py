"""A model family as one value, and the generic checkpoint loader and saver that read it.

A ``ModelFamily`` says everything the rest of mmjax needs to know about a family:
how to read its config from transformers', its Flax class, its weight-name table,
its partition rules, and which parameter groups train. ``load_checkpoint`` and
``save_checkpoint`` are written once, for every family; the architecture table
(``mmjax.models.architectures``) maps Hugging Face ``architectures`` names to families.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import PartitionSpec
from transformers import PretrainedConfig

from mmjax.models.common.decoder_config import DecoderConfig
from mmjax.models.common.linear import Linear, check_quantization, quantize_linear_layers
from mmjax.models.common.weights import CheckpointReader, LeafRule, Target, expand_table, fill_state, save_state

#: What int8 quantization stores as int8 by default: the decoder's projections (attention and MLP) and an untied
#: LM head (a tied one is the embedding table, kept as loaded). On the demo model, 500 held-out scenes: 98.17 %
#: right in float32, in int8 with and without the head (``benchmarks/demo_model_accuracy.py``); the head is a
#: third of the LLaVA benchmark model's bytes a decode step reads in float32.
DECODER_PROJECTIONS = r"^language_model/(layers/\d+/(self_attn|mlp)/\w+_proj|lm_head)$"
#: ``quantization_config.quant_method`` of a checkpoint ``save_pretrained`` wrote from an int8 model.
INT8_METHOD = "mmjax_int8"

#: ``(HF module path, our module path, leaf rules)``; paths may hold ``{i}`` (see ``expand_table``).
WeightRow = tuple[str, str, tuple[LeafRule, ...]]
#: ``(regex on the "/"-joined parameter path, spec)``: the first match wins.
PartitionRules = tuple[tuple[str, PartitionSpec], ...]


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class ModelFamily:
    """One model family: what the loader, ``save_pretrained``, training and the mesh read.

    Attributes:
      name: a short name for messages ("llava", "qwen2_5_vl").
      model_class: the Flax model; ``model_class(config, param_dtype=..., rngs=...)``.
      config_from_hf: transformers' config -> the family's validated, hashable config
        (raises naming any field it cannot honour).
      text_config: the family config -> its decoder's ``DecoderConfig`` (the mesh checks it).
      weight_table: the family config -> its weight rows (HF name, our path, leaf rules).
      layer_repeats: the family config -> ``{HF module path up to "{i}": count}``.
      aliases: ``(regex, replacement)`` from every published tensor spelling to the table's.
      ignored: regexes of tensors a checkpoint may carry that are not parameters.
      partition_rules: ``(family config, model-axis size) -> rules`` for a ``("data", "model")`` mesh.
      trainable_groups: ``mmjax.train``'s ``trainable=`` names -> parameter path prefixes.
      lora_prefix: the path prefix of the decoder layers LoRA adapts.
      quantized_layers: a regex on module paths: the ``Linear`` layers ``quantization="int8"`` stores as int8
        (by default the decoder's projections and an untied LM head; the vision tower, projector, embedding
        and norms stay in the loaded dtype).
    """

    name: str
    model_class: type[nnx.Module]
    config_from_hf: Callable[[PretrainedConfig], Any]
    text_config: Callable[[Any], DecoderConfig]
    weight_table: Callable[[Any], tuple[WeightRow, ...]]
    layer_repeats: Callable[[Any], Mapping[str, int]]
    aliases: tuple[tuple[str, str], ...] = ()
    ignored: tuple[str, ...] = ()
    partition_rules: Callable[[Any, int], PartitionRules]
    trainable_groups: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=lambda: MappingProxyType({}))
    lora_prefix: str = "language_model/layers/"
    quantized_layers: str = DECODER_PROJECTIONS

    def abstract_model(self, config: Any, dtype: jnp.dtype = jnp.float32, quantization: str | None = None
                       ) -> nnx.Module:
        """The model with shapes and dtypes but no memory (``nnx.eval_shape``); with ``quantization="int8"``,
        ``quantized_layers`` hold int8 kernels and float32 ``kernel_scale``s."""
        def build(rngs: Callable[[], nnx.Rngs]) -> nnx.Module:
            model = self.model_class(config, param_dtype=dtype, rngs=rngs())
            return model if quantization is None else quantize_linear_layers(model, self.quantized_layers)

        model = nnx.eval_shape(lambda: build(_shape_only_rngs))
        if nnx.state(model, nnx.RngState):  # the model keeps its streams: they must be real ones
            model = nnx.eval_shape(lambda: build(lambda: nnx.Rngs(0)))
        return model

    def targets(self, config: Any, model_paths: set) -> dict[str, Target]:
        """``{canonical HF tensor name: Target}`` for a model with these parameter paths."""
        return expand_table(self.weight_table(config), dict(self.layer_repeats(config)), model_paths)

    def shardings(self, mesh: Any, config: Any, model_paths: set) -> tuple[Any, dict]:
        """``(mesh, {parameter path: NamedSharding})``; the model axis is checked against the decoder first."""
        from mmjax.sharding import ShardedDims, make_mesh, named_shardings, partition_specs
        from mmjax.sharding.axes import MODEL

        mesh = make_mesh(mesh, dims=ShardedDims.of(self.text_config(config)))
        rules = self.partition_rules(config, mesh.shape[MODEL])
        return mesh, named_shardings(mesh, partition_specs(model_paths, rules))


class _UncountedStream(nnx.RngStream):
    """A stream that hands out its key without counting: enough for shapes, and cheap to trace. Flax's
    stream adds one to a traced counter per draw, and each such update reads the tracer's ``sharding``,
    whose error message JAX builds by scanning every equation traced so far: quadratic in the model's
    size, 0.2 of the 0.43 s ``abstract_model`` took for the benchmark LLaVA (``benchmarks/startup.py``)."""

    def __call__(self) -> jax.Array:
        return self.key[...]


def _shape_only_rngs() -> nnx.Rngs:
    """``nnx.Rngs`` whose default stream is uncounted: for ``nnx.eval_shape`` only (every draw is one key)."""
    rngs = nnx.Rngs(0)
    rngs.default = _UncountedStream(0, tag="default")
    return rngs


def param_paths(model: nnx.Module) -> set[tuple[str | int, ...]]:
    """The path of every ``nnx.Param`` leaf of ``model``."""
    return {leaf_path for leaf_path, _ in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def load_checkpoint(
    family: ModelFamily, path: str | os.PathLike, dtype: jnp.dtype = jnp.float32, *, mesh: Any = None,
    quantization: str | None = None,
) -> tuple[nnx.Module, PretrainedConfig]:
    """Load a checkpoint directory of ``family`` (its config, safetensors single or sharded).

    Args:
      mesh: None (one device), or a ``("data", "model")`` mesh or what ``mmjax.sharding.make_mesh``
        takes: each weight is placed by the family's partition rules as it is read.
      quantization: "int8": the family's ``quantized_layers`` are quantized per output column as they are
        read (or read as stored, from a checkpoint ``save_checkpoint`` wrote quantized). None: as the
        checkpoint is stored (its ``quantization_config``), float otherwise.

    Returns:
      ``(model, hf_config)``.
    """
    from mmjax.registry.config import load_hf_config

    hf_config = load_hf_config(path)
    stored = stored_quantization(hf_config)  # refuses a quantization method it cannot read
    quantization = check_quantization(quantization) or stored
    config = family.config_from_hf(hf_config)
    abstract = family.abstract_model(config, dtype, quantization)
    model_paths = param_paths(abstract)
    shardings = None if mesh is None else family.shardings(mesh, config, model_paths)[1]
    with CheckpointReader(path, family.aliases) as reader:
        model = fill_state(abstract, family.targets(config, model_paths), reader, dtype, ignore=family.ignored,
                           shardings=shardings)
    return model, hf_config


def stored_quantization(hf_config: PretrainedConfig) -> str | None:
    """"int8" for a checkpoint ``save_checkpoint`` wrote quantized, None for a float one; a ValueError for
    another quantization method (mmjax reads its own int8 layout only)."""
    config = getattr(hf_config, "quantization_config", None)
    if config is None:
        return None
    method = config.get("quant_method") if isinstance(config, dict) else getattr(config, "quant_method", None)
    if method != INT8_METHOD:
        raise ValueError(f"config.json quantization_config.quant_method={method!r} is not supported: mmjax reads "
                         f"float checkpoints (quantization='int8' quantizes them) and its own {INT8_METHOD!r} ones")
    return "int8"


def model_quantization(model: nnx.Module) -> str | None:
    """"int8" if any ``Linear`` of ``model`` stores int8 weights, else None."""
    quantized = any(isinstance(m, Linear) and m.quantized for _, m in nnx.iter_modules(model))
    return "int8" if quantized else None


def save_checkpoint(
    family: ModelFamily, model: nnx.Module, hf_config: PretrainedConfig, path: str | os.PathLike,
    *, max_shard_bytes: int = 2**30,
) -> str:
    """Write ``model`` as ``config.json`` + HF-named safetensors that transformers and ``load_checkpoint``
    both read (a quantized model: ``load_checkpoint`` only; see ``INT8_METHOD``). Tokenizer and processor
    files are the caller's to add. Returns ``path``."""
    path = os.fspath(path)
    os.makedirs(path, exist_ok=True)
    save_state(model, family.targets(model.config, param_paths(model)), path, max_shard_bytes=max_shard_bytes)
    hf_config = copy.deepcopy(hf_config)
    if model_quantization(model) == "int8":
        hf_config.quantization_config = int8_quantization_config(family)
    elif hasattr(hf_config, "quantization_config"):
        del hf_config.quantization_config
    hf_config.save_pretrained(path)
    return path


def int8_quantization_config(family: ModelFamily) -> dict[str, Any]:
    """The ``quantization_config`` of an int8 checkpoint: each quantized layer's ``weight`` is int8
    ``[out, in]`` and its ``weight_scale`` float32 ``[out]``, ``weight ~= int8 * scale[:, None]``."""
    return {"quant_method": INT8_METHOD, "bits": 8, "symmetric": True, "granularity": "per_output_channel",
            "weight_dtype": "int8", "scale_dtype": "float32", "modules": family.quantized_layers}
