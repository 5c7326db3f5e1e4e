"""What the engine reads of a loaded model (``mmjax.LLM`` is one): its split Flax model and its inputs' side."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import jax.numpy as jnp
from flax import nnx

from mmjax.registry import InputRegistry, ModelConfig, MultiModalRegistry, ProcessedPrompt, ProcessorCache, PromptInputs

if TYPE_CHECKING:
    from jax.sharding import Mesh
    from transformers import PretrainedConfig, PreTrainedTokenizerBase


@runtime_checkable
class LoadedModel(Protocol):
    """A model split once for ``jit`` (``graphdef``, ``state``), with what maps its prompts.

    ``mmjax.load`` returns one (``mmjax.LLM``); the engine, ``generate``, the server and the
    trainer take any value with these members.
    """

    model_config: ModelConfig
    graphdef: nnx.GraphDef
    state: nnx.State
    tokenizer: PreTrainedTokenizerBase
    dtype: jnp.dtype
    mesh: Mesh | None
    mm_registry: MultiModalRegistry
    input_registry: InputRegistry
    processor_cache: ProcessorCache

    @property
    def model(self) -> nnx.Module:
        """The Flax model (``nnx.merge(graphdef, state)``)."""
        ...

    @property
    def hf_config(self) -> PretrainedConfig:
        ...

    def process(self, prompt: PromptInputs) -> ProcessedPrompt:
        """Token ids (placeholders expanded), placeholder ranges and mm kwargs of one prompt."""
        ...

    def engine(self, config: Any = None) -> Any:
        """The continuous-batching engine for this model (an ``LLMEngine``)."""
        ...

    def prompt_mapper(self, num_threads: int | None = None) -> Any:
        """The worker threads that map this model's prompts (a ``PromptMapper``)."""
        ...
