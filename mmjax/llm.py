"""``mmjax.load``: a checkpoint directory to a handle that processes prompts and runs the model.

The handle carries the model (split once into ``graphdef`` and ``state`` so the
jitted functions are pure), its ``ModelConfig``, tokenizer and the registries
whose hooks it uses.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mmjax.registry import (
    INPUT_REGISTRY,
    MULTIMODAL_REGISTRY,
    InputContext,
    InputRegistry,
    ModelConfig,
    MultiModalRegistry,
    ProcessedPrompt,
    ProcessorCache,
    PromptInputs,
    process_prompt,
)
from mmjax.registry.processor_cache import DEFAULT_PROCESSOR_CACHE_GB
from mmjax.gc_pause import gc_paused
from mmjax.models.architectures import family_for
from mmjax.models.common.family import load_checkpoint
from mmjax.models.common.linear import check_quantization
from mmjax.sharding.multihost import fetch

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}

#: Prompt lengths are padded up to a multiple of this, so ``logits`` compiles per bucket, not per length.
LENGTH_BUCKET = 64


@functools.partial(jax.jit, static_argnums=0)
def _forward(
    graphdef: nnx.GraphDef, state: nnx.State, input_ids: jax.Array, positions: jax.Array, mm_kwargs: Mapping
) -> jax.Array:
    """``[1, T]`` ids and positions (``-1`` = padding) + the model's mm kwargs -> logits ``[1, T, V]``."""
    return nnx.merge(graphdef, state)(input_ids, positions, **mm_kwargs)


@dataclasses.dataclass(frozen=True, eq=False)
class LLM:
    """A loaded model. Build it with ``mmjax.load(path)``.

    Attributes:
      model_config: identifies the model for the registries.
      graphdef, state: the Flax model, split (``nnx.merge`` gives it back).
      tokenizer: the checkpoint's tokenizer.
      dtype: the parameter dtype.
      mesh: the ``("data", "model")`` mesh of a sharded model, else None.
      processor_cache: the mapped inputs of recent items, by content (``mm_processor_cache_gb``).
    """

    model_config: ModelConfig
    graphdef: nnx.GraphDef
    state: nnx.State
    tokenizer: Any
    dtype: jnp.dtype
    mm_registry: MultiModalRegistry = MULTIMODAL_REGISTRY
    input_registry: InputRegistry = INPUT_REGISTRY
    _engine: list = dataclasses.field(default_factory=list, repr=False)  # [LLMEngine] once built
    mesh: Any = None  # the jax.sharding.Mesh the weights are placed on (None: one device)
    _mappers: dict = dataclasses.field(default_factory=dict, repr=False)  # threads -> PromptMapper
    processor_cache: ProcessorCache = dataclasses.field(
        default_factory=lambda: ProcessorCache.from_gb(DEFAULT_PROCESSOR_CACHE_GB), repr=False)

    def engine(self, config: Any = None) -> Any:
        """The continuous-batching engine (built on first use, rebuilt when ``config`` changes).

        Building it sizes the KV cache from the memory left after the weights and
        the worst-case activations (``engine.memory.describe()`` says how).
        """
        from mmjax.engine.config import EngineConfig
        from mmjax.engine.engine import LLMEngine

        config = config or (self._engine[0].config if self._engine else EngineConfig())
        if not self._engine or self._engine[0].config != config:
            self._engine[:] = [LLMEngine(self, config)]
        return self._engine[0]

    def update_weights(self, source: Any) -> None:
        """Take ``source``'s parameters (a model of the same architecture, shapes and dtype, such as
        ``mmjax.train(llm, ...).llm``), copied and placed as this model's; ``state`` is replaced in place.

        With an engine built (``llm.engine()``), it is updated too (``LLMEngine.update_weights``: no program
        compiled, KV cache kept, prefix and encoder caches emptied), so ``logits``, ``mmjax.generate`` and
        ``mmjax.train`` all see the new weights. The processor cache stays (mapped inputs do not depend on them).

        Raises (nothing changes on any of them):
          RuntimeError: the engine has requests waiting or running.
          TypeError: ``source`` is not a loaded model (for a ``TrainResult``, pass its ``.llm``).
          ValueError: another architecture, parameter shape or dtype (the first differing parameter named), or
            another static configuration (e.g. a norm epsilon: the compiled programs could not follow it).
        """
        if self._engine:
            self._engine[0].update_weights(source)  # the engine's model is this one: it sets self.state
            return
        from mmjax.engine.weights import checked_state, placed_like, set_state

        state = checked_state(self.graphdef, self.state, source, self.hf_config)
        set_state(self, placed_like(state, self.state))

    def prompt_mapper(self, num_threads: int | None = None) -> Any:
        """The worker threads that map this model's prompts off the step loop (kept for reuse).

        ``num_threads``: default ``default_mapping_threads()``; 0 maps on the calling thread.
        """
        from mmjax.engine.prompt_mapper import PromptMapper, default_mapping_threads

        num_threads = default_mapping_threads() if num_threads is None else num_threads
        if num_threads not in self._mappers:
            self._mappers[num_threads] = PromptMapper(self, num_threads)
        return self._mappers[num_threads]

    @property
    def model(self) -> nnx.Module:
        """The Flax model (a fresh ``nnx.merge`` of ``graphdef`` and ``state``)."""
        return nnx.merge(self.graphdef, self.state)

    @property
    def hf_config(self) -> Any:
        return self.model_config.hf_config

    def process(self, prompt: PromptInputs) -> ProcessedPrompt:
        """Token ids (placeholders expanded), placeholder ranges and mm kwargs of one prompt."""
        return process_prompt(
            self.model_config, prompt, tokenizer=self.tokenizer,
            mm_registry=self.mm_registry, input_registry=self.input_registry, processor_cache=self.processor_cache,
        )

    def logits(self, prompt: PromptInputs) -> tuple[np.ndarray, np.ndarray]:
        """Full-sequence logits of one prompt (text or token ids, with ``multi_modal_data``).

        Returns:
          ``(token_ids i32[L], logits f32[L, V])``: the ids after placeholder
          expansion, and the logits at every position, by a jitted forward pass.
        """
        processed = self.process(prompt)
        length = len(processed.token_ids)
        padded = -(-length // LENGTH_BUCKET) * LENGTH_BUCKET
        input_ids = np.zeros((1, padded), np.int32)
        input_ids[0, :length] = processed.token_ids
        positions = np.full((1, padded), -1, np.int32)
        positions[0, :length] = np.arange(length)
        mm_kwargs = {k: jax.device_put(v) for k, v in processed.mm_kwargs.items()}
        if processed.rope_positions is not None:  # M-RoPE: padding turns by the last real position (masked anyway)
            rope = np.zeros((1, processed.rope_positions.shape[0], padded), np.int32)
            rope[0, :, :length] = processed.rope_positions
            mm_kwargs["rope_positions"] = jax.device_put(rope)
        logits = _forward(self.graphdef, self.state, jax.device_put(input_ids), jax.device_put(positions), mm_kwargs)
        return processed.token_ids, np.asarray(fetch(logits)[0, :length], np.float32)


@gc_paused()  # transformers' config and processor modules, the traced abstract model: see mmjax.gc_pause
def load(
    path: str | os.PathLike,
    dtype: str | jnp.dtype = jnp.float32,
    *,
    limit_mm_per_prompt: Mapping[str, int] | None = None,
    mm_processor_kwargs: Mapping[str, Any] | None = None,
    max_model_len: int | None = None,
    mesh: Any = None,
    mm_processor_cache_gb: float = DEFAULT_PROCESSOR_CACHE_GB,
    quantization: str | None = None,
) -> LLM:
    """Load a Hugging Face checkpoint directory (e.g. a ``llava-hf/*`` download).

    Args:
      path: the directory: ``config.json``, ``*.safetensors`` (single or sharded
        with its index), tokenizer files and the image-processor config.
      dtype: parameter dtype: float32, bfloat16 or float16 (a name or a jnp dtype).
      limit_mm_per_prompt: most items of each modality per prompt (default 1 each).
      mm_processor_kwargs: defaults for the model's multimodal hooks.
      max_model_len: context length (default: the model's).
      mesh: shard the weights over a device mesh (tensor parallel over its
        "model" axis, see docs/sharding.md): a ``jax.sharding.Mesh`` with axes
        ``("data", "model")``, a dict of axis sizes such as ``{"data": 2, "model": 4}``,
        or ``"auto"`` for the default shape of ``mmjax.sharding.make_mesh``.
        None (the default): everything on one device.
      mm_processor_cache_gb: host memory for the mapped inputs of recent multimodal items
        (kept by content, so a later prompt with the same image is not mapped again; LRU).
        Default 1; 0 disables it.
      quantization: "int8": the decoder's projections and an untied LM head are quantized as they are
        read (symmetric, one float32 scale per output column; vLLM's argument name), a quarter of float32's
        bytes (half of bfloat16's); activations, the vision tower, the embedding and norms stay in ``dtype``. None (the
        default): as the checkpoint is stored (``save_pretrained`` of an int8 model writes int8).
        See docs/quantization.md.

    Raises:
      FileNotFoundError: a file the checkpoint needs is missing (named): ``config.json``,
        a weight file or shard, the tokenizer's files, or, unless
        ``limit_mm_per_prompt={"image": 0}``, the image-processor config.
      ValueError: a file that is truncated or not valid JSON, a tensor of the wrong
        shape (each named), an unsupported architecture, or an unknown ``quantization``
        (or a checkpoint quantized by another method).
      TypeError: a ``config.json`` field of the wrong type (named by its path).
      NotImplementedError: an unsupported config field.
    """
    dtype = _as_dtype(dtype)
    quantization = check_quantization(quantization)
    processor_cache = ProcessorCache.from_gb(mm_processor_cache_gb)
    model_config = ModelConfig.from_pretrained(
        path,
        limit_mm_per_prompt=limit_mm_per_prompt or {},
        mm_processor_kwargs=mm_processor_kwargs or {},
        max_model_len=max_model_len,
    )
    limits = MULTIMODAL_REGISTRY.init_mm_limits_per_prompt(model_config)  # fail now on bad limits
    context = InputContext(model_config)
    tokenizer = context.get_tokenizer()
    # read now (cached), not at the first image prompt; a text-only model (Gemma3ForCausalLM) has none
    if limits.get("image", 0) > 0 and MULTIMODAL_REGISTRY.takes_modality(model_config, "image"):
        try:
            context.get_hf_image_processor()
        except FileNotFoundError as err:
            raise FileNotFoundError(
                f"{err}; it is needed for image prompts (to load for text only, pass "
                f"limit_mm_per_prompt={{'image': 0}})"
            ) from err
    _build_cpu_kernels_meanwhile(model_config.hf_config)
    family = family_for(model_config.hf_config)
    if mesh is not None:
        mesh = _resolve_mesh(mesh, family.text_config(family.config_from_hf(model_config.hf_config)))
    model, _ = load_checkpoint(family, os.fspath(path), dtype, mesh=mesh, quantization=quantization)
    graphdef, state = nnx.split(model)
    return LLM(model_config=model_config, graphdef=graphdef, state=state, tokenizer=tokenizer, dtype=dtype,
               mesh=mesh, processor_cache=processor_cache)


def _build_cpu_kernels_meanwhile(hf_config: Any) -> None:
    """On CPU, the paged-attention kernel for this model's head dim, the few-row matmul kernel and the
    zeroed-pages kernel build (first time on this machine) or load while the weights are read."""
    from mmjax.kernels_cpu import build_in_background, build_matmul_in_background, build_zeroed_in_background

    text = getattr(hf_config, "text_config", hf_config)
    heads = getattr(text, "num_attention_heads", None)
    head_dim = getattr(text, "head_dim", None) or (text.hidden_size // heads if heads else None)
    if isinstance(head_dim, int):
        build_in_background(head_dim)
    build_matmul_in_background()
    build_zeroed_in_background()


def _resolve_mesh(mesh: Any, text_config: Any) -> Any:
    from mmjax.sharding import ShardedDims, make_mesh

    dims = ShardedDims.of(text_config)
    return make_mesh(None if isinstance(mesh, str) and mesh == "auto" else mesh, dims=dims)


def _as_dtype(dtype: str | jnp.dtype) -> jnp.dtype:
    name = dtype if isinstance(dtype, str) else jnp.dtype(dtype).name
    if name not in _DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
    return jnp.dtype(_DTYPES[name])
