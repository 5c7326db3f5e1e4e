"""Which mmjax model class implements a Hugging Face ``architectures`` name, and its loader."""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

from transformers import PretrainedConfig


@dataclasses.dataclass(frozen=True)
class Architecture:
    """Where the implementation of one HF architecture lives (imported lazily).

    Attributes:
      model: "module:Class" of the Flax model (it carries the registry hooks).
      loader: "module:function", ``loader(path, dtype) -> (model, hf_config)``.
    """

    model: str
    loader: str


ARCHITECTURES: Mapping[str, Architecture] = MappingProxyType({
    "LlavaForConditionalGeneration": Architecture(
        model="mmjax.models.llava:LlavaForConditionalGeneration",
        loader="mmjax.models.llava_weights:load_llava",
    ),
    "LlavaNextForConditionalGeneration": Architecture(
        model="mmjax.models.llava_next:LlavaNextForConditionalGeneration",
        loader="mmjax.models.llava_next_weights:load_llava_next",
    ),
})


def _import(spec: str) -> Any:
    module, name = spec.split(":")
    return getattr(importlib.import_module(module), name)


def resolve_architecture(hf_config: PretrainedConfig) -> Architecture:
    """The entry for the first of ``hf_config.architectures`` that mmjax implements.

    Raises:
      ValueError: none of them is implemented.
    """
    names = list(getattr(hf_config, "architectures", None) or [])
    for name in names:
        if name in ARCHITECTURES:
            return ARCHITECTURES[name]
    raise ValueError(
        f"mmjax has no implementation of architectures {names} (model_type "
        f"{getattr(hf_config, 'model_type', None)!r}); supported: {sorted(ARCHITECTURES)}. "
        f"For a model of your own, pass ModelConfig(model_cls=YourModel, ...)"
    )


def resolve_model_class(hf_config: PretrainedConfig) -> type:
    """The mmjax model class for ``hf_config.architectures``."""
    return _import(resolve_architecture(hf_config).model)


def resolve_loader(hf_config: PretrainedConfig) -> Callable[..., Any]:
    """The checkpoint loader for ``hf_config.architectures``."""
    return _import(resolve_architecture(hf_config).loader)
