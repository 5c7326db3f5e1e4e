"""``MultiModalPlugin``: the data handling of one modality, dispatched by model.

A plugin is stateless: what it does for a model comes from the hooks that the
model class carries (see ``hooks.py``). Registration methods return decorators
that attach a new frozen hooks value to the decorated class.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from mmjax.registry.config import InputContext, ModelConfig
from mmjax.registry.hooks import DEFAULT, hooks_of, with_mapping_hook
from mmjax.registry.inputs import MultiModalInputs
from mmjax.registry.processor_kwargs import Keywords, accepted_keywords, merge_kwargs, select_kwargs, union_keywords

InputMapper = Callable[..., MultiModalInputs]
MaxTokens = int | Callable[..., int]


class MultiModalPlugin(abc.ABC):
    """Base class for the data processing of one modality (vLLM's ``MultiModalPlugin``).

    Subclasses give the data key, a default input mapper and a default maximum
    token count. Add a modality (video, say) by subclassing and passing an
    instance to ``MultiModalRegistry.register_plugin``.
    """

    @abc.abstractmethod
    def get_data_key(self) -> str:
        """The key of this modality in ``multi_modal_data`` (e.g. ``"image"``)."""

    @abc.abstractmethod
    def _default_input_mapper(self, ctx: InputContext, data: object, **mm_processor_kwargs: Any) -> MultiModalInputs:
        """Map data to model kwargs when the model registered no mapper of its own.

        Raises:
          TypeError: ``data`` is of a type this modality does not support.
        """

    @abc.abstractmethod
    def _default_max_multimodal_tokens(self, ctx: InputContext) -> int:
        """The max tokens of one item when the model registered no count of its own."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.get_data_key()!r})"

    # -- the data: its form, how many items, what a model may be sent ---------------

    def parse_data(self, data: object) -> object:
        """``data`` in the form hooks receive: one item, or a list of several (here: unchanged).

        A plugin whose items may themselves be lists (a video as a list of frames) checks and
        rewrites its data here, so that everywhere else a list means several items.
        """
        return data

    def count_items(self, data: object) -> int:
        """How many items ``data`` holds: a list's length, else 1."""
        return len(data) if isinstance(data, list) else 1

    def check_data(
        self, model_config: ModelConfig, data: object, mm_processor_kwargs: Mapping[str, Any] | None = None
    ) -> None:
        """Refuse data beyond the model's ceilings, before any mapping (here: nothing to check).

        Args:
          data: as ``parse_data`` returns it.
          mm_processor_kwargs: the request's own (they may lower a ceiling, never raise it).
        """

    # -- registration: decorators returning the class with new frozen hooks --------

    def register_input_mapper(self, mapper: InputMapper | None = None) -> Callable[[type], type]:
        """Register ``mapper(ctx, data, **mm_processor_kwargs) -> MultiModalInputs`` for a model class.

        With no mapper, the plugin's default one is used. Unlike vLLM, nothing
        global changes: the decorated class gets a new frozen hooks value.
        """
        if mapper is not None and not callable(mapper):
            raise TypeError(f"{self.get_data_key()} input mapper must be callable, got {mapper!r}")
        key = self.get_data_key()
        return lambda cls: with_mapping_hook(
            cls, "input_mappers", key, DEFAULT if mapper is None else mapper, f"an input mapper for {key!r}"
        )

    def register_max_multimodal_tokens(self, max_mm_tokens: MaxTokens | None = None) -> Callable[[type], type]:
        """Register the most tokens one item of this modality can become, for a model class.

        Args:
          max_mm_tokens: an int >= 1, a function ``(ctx, **mm_processor_kwargs) -> int``,
            or None for the plugin's default.
        """
        key = self.get_data_key()

        def decorate(cls: type) -> type:
            if max_mm_tokens is not None and not callable(max_mm_tokens):
                _check_max_tokens(max_mm_tokens, key, getattr(cls, "__name__", repr(cls)))
            value = DEFAULT if max_mm_tokens is None else max_mm_tokens
            return with_mapping_hook(cls, "max_mm_tokens", key, value, f"a max token count for {key!r}")

        return decorate

    # -- lookups: pure functions of the model config --------------------------------

    def map_input(
        self,
        model_config: ModelConfig,
        data: object,
        mm_processor_kwargs: Mapping[str, Any] | None = None,
    ) -> MultiModalInputs:
        """Map ``data`` to model kwargs through the mapper registered for the model.

        Raises:
          KeyError: the model registered no input mapper for this modality.
          TypeError: the mapper does not support the type of ``data``.
          ValueError: ``data`` fails the plugin's checks (``parse_data``, ``check_data``).
        """
        key = self.get_data_key()
        mapper = hooks_of(model_config.model_cls).input_mappers.get(key)
        if mapper is None:
            raise KeyError(f"no input mapper for {key!r} is registered for {model_config.name}")
        if mapper is DEFAULT:
            mapper = self._default_input_mapper
        data = self.parse_data(data)
        self.check_data(model_config, data, mm_processor_kwargs)
        merged = merge_kwargs(model_config.mm_processor_kwargs, mm_processor_kwargs)
        kwargs = select_kwargs(merged, mapper, skip=2)  # mapper(ctx, data, **kwargs)
        outputs = mapper(InputContext(model_config), data, **kwargs)
        if not isinstance(outputs, Mapping):
            raise TypeError(
                f"the {key} input mapper of {model_config.name} returned {type(outputs).__name__}; "
                f"it must return MultiModalInputs (a mapping of forward kwargs to arrays)"
            )
        return outputs if isinstance(outputs, MultiModalInputs) else MultiModalInputs(outputs)

    def get_max_multimodal_tokens(
        self, model_config: ModelConfig, mm_processor_kwargs: Mapping[str, Any] | None = None
    ) -> int:
        """The most tokens one item can become for the model; 0 if it registered nothing."""
        key = self.get_data_key()
        value = hooks_of(model_config.model_cls).max_mm_tokens.get(key)
        if value is None:
            return 0
        ctx = InputContext(model_config)
        if value is DEFAULT:
            value = self._default_max_multimodal_tokens(ctx)
        elif callable(value):
            merged = merge_kwargs(model_config.mm_processor_kwargs, mm_processor_kwargs)
            value = value(ctx, **select_kwargs(merged, value, skip=1))
        return int(_check_max_tokens(value, key, model_config.name))


    def accepted_mm_processor_kwargs(self, model_config: ModelConfig) -> Keywords:
        """The ``mm_processor_kwargs`` keys this modality's hooks of the model accept (None: any)."""
        hooks = hooks_of(model_config.model_cls)
        mapper, max_tokens = hooks.input_mappers.get(self.get_data_key()), hooks.max_mm_tokens.get(self.get_data_key())
        sets: list[Keywords] = [self._plugin_keywords()]
        if mapper is DEFAULT:
            sets.append(self._default_mapper_keywords(InputContext(model_config)))
        elif mapper is not None:
            sets.append(accepted_keywords(mapper, 2))
        if callable(max_tokens) and max_tokens is not DEFAULT:
            sets.append(accepted_keywords(max_tokens, 1))
        return union_keywords(sets)

    def _plugin_keywords(self) -> frozenset[str]:
        """The ``mm_processor_kwargs`` the plugin reads itself (e.g. ceilings), for every model."""
        return frozenset()

    def _default_mapper_keywords(self, ctx: InputContext) -> Keywords:
        """The keywords the default mapper accepts; subclasses narrow it down."""
        return accepted_keywords(self._default_input_mapper, 2)


def _check_max_tokens(value: object, key: str, model_name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(
            f"max {key} tokens for {model_name} must be an int >= 1 (or a function returning one), "
            f"got {value!r}"
        )
    return value
