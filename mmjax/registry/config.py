"""The model config every registry lookup is keyed by, and the context hooks receive.

``ModelConfig`` plays the role of vLLM's ``ModelConfig``: it names the model
(its Hugging Face config and, for a checkpoint on disk, its directory), the
mmjax model class that implements it, the per-prompt limits of each modality
and the model-level ``mm_processor_kwargs``. It is frozen: two lookups with the
same config give the same answer.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, TypeVar

from transformers import PretrainedConfig

_C = TypeVar("_C", bound=PretrainedConfig)


def _frozen_mapping(value: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return MappingProxyType(dict(value or {}))


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class ModelConfig:
    """Identifies a model for the registries.

    Attributes:
      hf_config: the model's transformers config (``config.json``).
      model: the checkpoint directory, where the tokenizer and the image
        processor config live; ``None`` for a model built in code.
      model_cls: the mmjax model class; resolved from ``hf_config.architectures``
        when not given.
      limit_mm_per_prompt: most items of each modality one prompt may carry
        (default 1 for every modality; 0 disables a modality).
      mm_processor_kwargs: keyword arguments for the model's multimodal hooks;
        a request's own ``mm_processor_kwargs`` override them key by key.
      max_model_len: the context length; ``None`` takes the HF config's.
    """

    hf_config: PretrainedConfig
    model: str | None = None
    model_cls: type | None = None
    limit_mm_per_prompt: Mapping[str, int] = dataclasses.field(default_factory=dict)
    mm_processor_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    max_model_len: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.hf_config, PretrainedConfig):
            raise TypeError(
                f"ModelConfig.hf_config must be a transformers PretrainedConfig, "
                f"got {type(self.hf_config).__name__}"
            )
        object.__setattr__(self, "limit_mm_per_prompt", _frozen_mapping(self.limit_mm_per_prompt))
        object.__setattr__(self, "mm_processor_kwargs", _frozen_mapping(self.mm_processor_kwargs))
        if self.model_cls is None:
            from mmjax.registry.architectures import resolve_model_class

            object.__setattr__(self, "model_cls", resolve_model_class(self.hf_config))

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, **overrides: Any) -> "ModelConfig":
        """Read ``config.json`` from a checkpoint directory."""
        from transformers import AutoConfig

        path = os.fspath(path)
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise FileNotFoundError(f"no config.json in checkpoint directory {path!r}")
        return cls(hf_config=AutoConfig.from_pretrained(path), model=path, **overrides)

    @property
    def context_length(self) -> int | None:
        """Most tokens a sequence may hold: ``max_model_len``, else the text config's positions."""
        if self.max_model_len is not None:
            return self.max_model_len
        return getattr(self.hf_config.get_text_config(), "max_position_embeddings", None)

    @property
    def vocab_size(self) -> int | None:
        """The text model's vocabulary size, when the config states one."""
        return getattr(self.hf_config.get_text_config(), "vocab_size", None)

    @property
    def name(self) -> str:
        """A human-readable name for error messages: the class and the checkpoint."""
        where = f" ({self.model})" if self.model else ""
        return f"{self.model_cls.__name__}{where}"


@dataclasses.dataclass(frozen=True)
class InputContext:
    """What a registered hook may read about the model it serves (vLLM's ``InputContext``)."""

    model_config: ModelConfig

    def get_hf_config(self, hf_config_type: type[_C] = PretrainedConfig) -> _C:
        """The HF config, checked to be an instance of ``hf_config_type``.

        Raises:
          TypeError: the config is of another type.
        """
        hf_config = self.model_config.hf_config
        if not isinstance(hf_config, hf_config_type):
            raise TypeError(
                f"Invalid type of HuggingFace config for {self.model_config.name}: "
                f"expected {hf_config_type.__name__}, found {type(hf_config).__name__}"
            )
        return hf_config

    def get_hf_image_processor_config(self) -> dict[str, Any]:
        """The checkpoint's image-processor config as a dict ({} for a model without one)."""
        if self.model_config.model is None:
            return {}
        return dict(_load_image_processor(self.model_config.model).to_dict())

    def get_hf_image_processor(self) -> Any:
        """The checkpoint's Hugging Face image processor (PIL backend: no torch needed)."""
        return _load_image_processor(self._require_path("an image processor"))

    def get_hf_feature_extractor(self) -> Any:
        """The checkpoint's Hugging Face audio feature extractor."""
        return _load_feature_extractor(self._require_path("an audio feature extractor"))

    def get_tokenizer(self) -> Any:
        """The checkpoint's tokenizer."""
        return _load_tokenizer(self._require_path("a tokenizer"))

    def _require_path(self, what: str) -> str:
        if self.model_config.model is None:
            raise ValueError(
                f"{self.model_config.name} has no checkpoint directory to load {what} from; "
                f"build its ModelConfig with model=<checkpoint dir> or register a custom hook"
            )
        return self.model_config.model


# Loading is deterministic in the path, so memoising it is safe and keeps hooks cheap.
@functools.lru_cache(maxsize=32)
def _load_image_processor(path: str) -> Any:
    from transformers import AutoImageProcessor

    try:
        return AutoImageProcessor.from_pretrained(path, backend="pil")
    except (OSError, ValueError) as err:
        raise FileNotFoundError(
            f"could not load an image processor config (preprocessor_config.json or "
            f"processor_config.json) from {path!r}: {err}"
        ) from err


@functools.lru_cache(maxsize=32)
def _load_feature_extractor(path: str) -> Any:
    from transformers import AutoFeatureExtractor

    try:
        return AutoFeatureExtractor.from_pretrained(path)
    except (OSError, ValueError) as err:
        raise FileNotFoundError(f"could not load an audio feature extractor from {path!r}: {err}") from err


@functools.lru_cache(maxsize=32)
def _load_tokenizer(path: str) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as err:
        raise FileNotFoundError(f"could not load a tokenizer from {path!r}: {err}") from err
