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
import json
import os
import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, TypeVar

from transformers import PretrainedConfig

_C = TypeVar("_C", bound=PretrainedConfig)


def _frozen_mapping(value: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return MappingProxyType(dict(value or {}))


CONFIG_FILE = "config.json"


def load_hf_config(path: str | os.PathLike) -> PretrainedConfig:
    """The transformers config of a checkpoint directory, read from its ``config.json`` only.

    Raises, naming the file and what was wrong:
      FileNotFoundError: there is no ``config.json``.
      ValueError: it is not valid JSON, not a JSON object, or a field holds a
        value of the right type that transformers refuses.
      TypeError: a field has the wrong type (named by its path, e.g.
        ``text_config.hidden_size``, with the type expected).
    """
    from huggingface_hub.errors import StrictDataclassError, StrictDataclassFieldValidationError
    from transformers import AutoConfig

    path = os.fspath(path)
    file = os.path.join(path, CONFIG_FILE)
    if not os.path.isfile(file):
        raise FileNotFoundError(f"no {CONFIG_FILE} in checkpoint directory {path!r}")
    raw = _read_json_object(file)
    try:
        hf_config = AutoConfig.from_pretrained(path, local_files_only=True)
    except StrictDataclassFieldValidationError as err:
        field = re.search(r"field '([^']+)'", str(err))
        raise _field_error(file, raw, field.group(1) if field else "?", err.__cause__ or err) from err
    except StrictDataclassError as err:  # a class validator: fields of the right types that do not fit together
        raise ValueError(f"{file} is not a valid config: {err.__cause__ or err}") from err
    _check_aliased_fields(file, hf_config, raw, "")
    return hf_config


def _read_json_object(file: str) -> dict[str, Any]:
    try:
        with open(file, encoding="utf-8") as f:
            raw = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{file} is not valid JSON (truncated or hand-edited?): {err}") from err
    if not isinstance(raw, dict):
        raise ValueError(f"{file} must hold a JSON object, got a JSON {type(raw).__name__}")
    return raw


def _field_paths(raw: Mapping[str, Any], field: str, prefix: str = "") -> list[tuple[str, Any]]:
    """``(dotted path, value)`` of every ``field`` key in ``raw`` and its nested objects."""
    found = [(prefix + field, raw[field])] if field in raw else []
    for key, value in raw.items():
        if isinstance(value, dict):
            found += _field_paths(value, field, f"{prefix}{key}.")
    return found


def _field_error(file: str, raw: Mapping[str, Any], field: str, cause: BaseException) -> Exception:
    """A ``TypeError`` (or ``ValueError``) naming the file, the field's path, the type expected and the value."""
    candidates = _field_paths(raw, field)
    culprits = [(p, v) for p, v in candidates if repr(v) in str(cause)] or candidates
    where = " or ".join(p for p, _ in culprits) or field
    reason = _reason(cause)
    if _is_type_error(cause, reason):
        return TypeError(f"{file}: field {where} has a wrong type: {reason}")
    return ValueError(f"{file}: field {where} has an unsupported value: {reason}")


def _reason(cause: BaseException) -> str:
    """huggingface_hub's "Field 'x' expected int, got str (value: '5')" without its "Field 'x' "."""
    return re.sub(r"^Field '[^']+' ", "", str(cause))


def _is_type_error(cause: BaseException, reason: str) -> bool:
    # A Literal field (e.g. vision_feature_select_strategy) fails as a TypeError too; it is a value error.
    return isinstance(cause, TypeError) and not reason.startswith("expected one of")


def _check_aliased_fields(file: str, hf_config: PretrainedConfig, raw: Mapping[str, Any], prefix: str) -> None:
    """Validate fields spelled by an ``attribute_map`` alias (e.g. ``image_token_id``), which
    transformers stores without running the type check of the field they stand for."""
    validators = getattr(hf_config, "__validators__", {})
    for alias, target in (getattr(type(hf_config), "attribute_map", None) or {}).items():
        if alias not in raw:
            continue
        for validator in validators.get(target, ()):
            try:
                validator(raw[alias])
            except (TypeError, ValueError) as err:
                where, reason = f"{prefix}{alias} (an alias of {prefix}{target})", _reason(err)
                if _is_type_error(err, reason):
                    raise TypeError(f"{file}: field {where} has a wrong type: {reason}") from err
                raise ValueError(f"{file}: field {where} has an unsupported value: {reason}") from err
    for key, value in raw.items():
        sub = getattr(hf_config, key, None) if isinstance(value, dict) else None
        if isinstance(sub, PretrainedConfig):
            _check_aliased_fields(file, sub, value, f"{prefix}{key}.")


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
            from mmjax.registry.model_registry import resolve_model_class

            object.__setattr__(self, "model_cls", resolve_model_class(self.hf_config))

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, **overrides: Any) -> "ModelConfig":
        """Read ``config.json`` from a checkpoint directory (see ``load_hf_config`` for its errors)."""
        path = os.fspath(path)
        return cls(hf_config=load_hf_config(path), model=path, **overrides)

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

    def get_hf_video_processor_config(self) -> dict[str, Any]:
        """The checkpoint's video-processor settings as a dict, read as transformers reads them:
        ``video_preprocessor_config.json``, else ``processor_config.json``'s ``video_processor``, else
        the image processor's (checkpoints older than video processors, e.g. Qwen2.5-VL's on the Hub)."""
        if self.model_config.model is None:
            return {}
        return dict(_load_video_processor_config(self.model_config.model))

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


#: Files an image-processor config is read from (transformers 5 writes the second).
IMAGE_PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")
#: Files a tokenizer is read from: a fast one needs tokenizer.json, a slow one its vocabulary files.
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "merges.txt", "vocab.txt",
)


def _present(path: str, names: tuple[str, ...]) -> list[str]:
    return [name for name in names if os.path.isfile(os.path.join(path, name))]


def _invalid_json(path: str, names: list[str]) -> str | None:
    """The first of the ``.json`` files ``names`` that does not parse, with why (None: all parse)."""
    for name in names:
        if name.endswith(".json"):
            try:
                with open(os.path.join(path, name), encoding="utf-8") as f:
                    json.load(f)
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                return f"{os.path.join(path, name)} is not valid JSON (truncated or hand-edited?): {err}"
    return None


# Loading is deterministic in the path, so memoising it is safe and keeps hooks cheap.
@functools.lru_cache(maxsize=32)
def _load_image_processor(path: str) -> Any:
    from transformers import AutoImageProcessor

    present = _present(path, IMAGE_PROCESSOR_FILES)
    if not present:
        raise FileNotFoundError(
            f"could not load an image processor config from {path!r}: neither "
            f"{' nor '.join(IMAGE_PROCESSOR_FILES)} exists there"
        )
    try:
        return AutoImageProcessor.from_pretrained(path, backend="pil")
    except (OSError, ValueError) as err:
        bad = _invalid_json(path, present)
        if bad:
            raise ValueError(f"could not load an image processor config: {bad}") from err
        raise FileNotFoundError(
            f"could not load an image processor config (preprocessor_config.json or "
            f"processor_config.json) from {path!r}: {err}"
        ) from err


@functools.lru_cache(maxsize=32)
def _load_video_processor_config(path: str) -> Mapping[str, Any]:
    video_file = os.path.join(path, "video_preprocessor_config.json")
    if os.path.isfile(video_file):
        return MappingProxyType(_read_json_object(video_file))
    processor_file = os.path.join(path, "processor_config.json")
    if os.path.isfile(processor_file):
        nested = _read_json_object(processor_file).get("video_processor")
        if isinstance(nested, dict):
            return MappingProxyType(nested)
    return MappingProxyType(dict(_load_image_processor(path).to_dict()))


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

    present = _present(path, TOKENIZER_FILES)
    looked_for = ", ".join(TOKENIZER_FILES)
    if not present:
        raise FileNotFoundError(f"could not load a tokenizer from {path!r}: none of {looked_for} exists there")
    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as err:
        bad = _invalid_json(path, present)
        if bad:
            raise ValueError(f"could not load a tokenizer: {bad}") from err
        hint = "" if "tokenizer.json" in present else " (a fast tokenizer needs tokenizer.json)"
        raise FileNotFoundError(
            f"could not load a tokenizer from {path!r}: looked for {looked_for}, found only "
            f"{', '.join(present)}{hint}: {err}"
        ) from err
