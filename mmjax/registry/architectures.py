"""Which mmjax model class implements a Hugging Face ``architectures`` name."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from types import MappingProxyType

from transformers import PretrainedConfig

#: HF architecture name → "module:Class" of the mmjax implementation (imported lazily).
ARCHITECTURES: Mapping[str, str] = MappingProxyType({})


def resolve_model_class(hf_config: PretrainedConfig) -> type:
    """The mmjax model class for ``hf_config.architectures``.

    Raises:
      ValueError: no architecture of the config is implemented by mmjax.
    """
    names = list(getattr(hf_config, "architectures", None) or [])
    for name in names:
        if name in ARCHITECTURES:
            module, cls = ARCHITECTURES[name].split(":")
            return getattr(importlib.import_module(module), cls)
    raise ValueError(
        f"mmjax has no implementation of architectures {names} (model_type "
        f"{getattr(hf_config, 'model_type', None)!r}); supported: {sorted(ARCHITECTURES)}. "
        f"For a model of your own, pass ModelConfig(model_cls=YourModel, ...)"
    )
