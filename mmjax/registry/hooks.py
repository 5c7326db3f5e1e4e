"""The frozen bundle of registry hooks a model class carries.

vLLM keeps its registrations in dicts inside global registries and mutates them
at import time. mmjax keeps them on the model class itself as one frozen
``ModelHooks`` value: each ``register_*`` decorator builds a *new* value from the
old one and attaches it to the decorated class. So a lookup is a pure function
of the model class (found from the model config), a subclass can extend its
parent's hooks without changing them, and nothing global is ever written.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, ClassVar, Literal

_HOOKS_ATTR = "__mmjax_hooks__"


class SupportsMultiModal:
    """Mixin a multimodal model class declares (vLLM's ``SupportsMultiModal``).

    The model's forward takes one keyword argument per multimodal input it
    accepts (``pixel_values``, ``image_embeds``, ...). A plain mixin rather than
    a ``typing.Protocol``: ``nnx.Module`` has a metaclass a Protocol cannot share.
    """

    supports_multimodal: ClassVar[Literal[True]] = True


def supports_multimodal(model: object) -> bool:
    """Whether a model class or instance declares ``SupportsMultiModal``."""
    return bool(getattr(model, "supports_multimodal", False))


class _Default:
    """Marker: the hook was registered without a function, so the plugin's default is used."""

    def __repr__(self) -> str:
        return "DEFAULT"


DEFAULT = _Default()


def _empty() -> Mapping:
    return MappingProxyType({})


@dataclasses.dataclass(frozen=True)
class ModelHooks:
    """Everything registered for one model class. Never mutated: see ``with_hooks``.

    Attributes:
      input_mappers: modality → mapper ``(ctx, data, **kw) -> MultiModalInputs`` or DEFAULT.
      max_mm_tokens: modality → int, ``(ctx, **kw) -> int`` or DEFAULT.
      dummy_data_factory: ``(ctx, seq_len, mm_counts, **kw) -> DummyData`` or None.
      input_processor: ``(ctx, inputs, **kw) -> DecoderOnlyInputs`` or None.
    """

    input_mappers: Mapping[str, Callable[..., Any] | _Default] = dataclasses.field(default_factory=_empty)
    max_mm_tokens: Mapping[str, int | Callable[..., int] | _Default] = dataclasses.field(default_factory=_empty)
    dummy_data_factory: Callable[..., Any] | None = None
    input_processor: Callable[..., Any] | None = None


def hooks_of(model_cls: type) -> ModelHooks:
    """The hooks registered for ``model_cls`` (inherited from its bases), or empty hooks."""
    return getattr(model_cls, _HOOKS_ATTR, ModelHooks())


def _require_multimodal(model_cls: type, what: str) -> None:
    if not isinstance(model_cls, type):
        raise TypeError(f"{what} decorates a model class, got {model_cls!r}")
    if not supports_multimodal(model_cls):
        raise TypeError(
            f"cannot register {what} on {model_cls.__name__}: it does not declare "
            f"SupportsMultiModal (class {model_cls.__name__}(nnx.Module, SupportsMultiModal))"
        )


def with_mapping_hook(model_cls: type, field: str, key: str, value: Any, what: str) -> type:
    """Attach a new ``ModelHooks`` whose ``field`` mapping has ``key`` set to ``value``."""
    _require_multimodal(model_cls, what)
    old = hooks_of(model_cls)
    mapping = getattr(old, field)
    if key in mapping and _HOOKS_ATTR in vars(model_cls):
        warnings.warn(
            f"{model_cls.__name__} already has {what}; the new one replaces it",
            stacklevel=3,
        )
    new = dataclasses.replace(old, **{field: MappingProxyType({**mapping, key: value})})
    setattr(model_cls, _HOOKS_ATTR, new)
    return model_cls


def with_hook(model_cls: type, field: str, value: Any, what: str) -> type:
    """Attach a new ``ModelHooks`` with ``field`` set to ``value`` (any model class)."""
    if not isinstance(model_cls, type):
        raise TypeError(f"{what} decorates a model class, got {model_cls!r}")
    old = hooks_of(model_cls)
    if getattr(old, field) is not None and _HOOKS_ATTR in vars(model_cls):
        warnings.warn(f"{model_cls.__name__} already has {what}; the new one replaces it", stacklevel=3)
    setattr(model_cls, _HOOKS_ATTR, dataclasses.replace(old, **{field: value}))
    return model_cls
