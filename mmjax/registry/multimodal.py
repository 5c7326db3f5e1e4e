"""``MultiModalRegistry``: dispatches multimodal data to the plugin of its modality.

The registry is an immutable value (a tuple of plugins). Where vLLM's
``MultiModalRegistry`` mutates itself, this one returns a new value
(``register_plugin``) or computes the answer from the model config
(``init_mm_limits_per_prompt``, ``get_mm_limits_per_prompt``).
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any

from mmjax.registry.audio import AudioPlugin
from mmjax.registry.config import ModelConfig
from mmjax.registry.image import ImagePlugin
from mmjax.registry.inputs import MultiModalDataDict, MultiModalInputs
from mmjax.registry.hooks import hooks_of
from mmjax.registry.plugin import InputMapper, MaxTokens, MultiModalPlugin
from mmjax.registry.video import VideoPlugin
from mmjax.registry.processor_kwargs import (
    Keywords,
    accepted_keywords,
    merge_kwargs,
    union_keywords,
    warn_unaccepted,
)


class UnknownModalityError(KeyError, ValueError):
    """A ``multi_modal_data`` key (or a limit) names a modality no plugin handles.

    A ``KeyError`` (an unknown key) and a ``ValueError`` (a bad input value), so a
    caller catching either of the documented input errors catches it.
    """

    def __str__(self) -> str:  # KeyError would print the message in quotes
        return str(self.args[0])


class UnsupportedModalityError(KeyError, ValueError):
    """``multi_modal_data`` holds a modality the model takes no input of (it registered no mapper for it).

    A ``KeyError`` (as ``MultiModalPlugin.map_input`` raises for a missing mapper) and a ``ValueError``.
    """

    def __str__(self) -> str:
        return str(self.args[0])


DEFAULT_PLUGINS: tuple[MultiModalPlugin, ...] = (ImagePlugin(), AudioPlugin(), VideoPlugin())


def count_items(data: object) -> int:
    """How many items one modality's data holds: a list's length, else 1 (a plugin may count its own
    way: ``MultiModalRegistry.count_items``)."""
    return len(data) if isinstance(data, list) else 1


class MultiModalRegistry:
    """Dispatches data processing to the ``MultiModalPlugin`` of each modality."""

    def __init__(self, *, plugins: Sequence[MultiModalPlugin] = DEFAULT_PLUGINS) -> None:
        by_key: dict[str, MultiModalPlugin] = {}
        for plugin in plugins:
            if not isinstance(plugin, MultiModalPlugin):
                raise TypeError(f"plugins must be MultiModalPlugin instances, got {plugin!r}")
            key = plugin.get_data_key()
            if key in by_key:
                warnings.warn(f"a plugin is already registered for {key!r}; {plugin!r} replaces it", stacklevel=2)
            by_key[key] = plugin
        self._plugins = MappingProxyType(by_key)

    def __repr__(self) -> str:
        return f"MultiModalRegistry(plugins={tuple(self._plugins.values())!r})"

    @property
    def plugins(self) -> Mapping[str, MultiModalPlugin]:
        """The plugins by data key (read-only)."""
        return self._plugins

    def register_plugin(self, plugin: MultiModalPlugin) -> "MultiModalRegistry":
        """A new registry that also handles ``plugin``'s modality.

        Differs from vLLM, which adds the plugin to the global registry in place:
        the registry you call this on is unchanged; use the returned one.
        """
        return MultiModalRegistry(plugins=(*self._plugins.values(), plugin))

    def _get_plugin(self, data_key: str) -> MultiModalPlugin:
        plugin = self._plugins.get(data_key)
        if plugin is None:
            raise UnknownModalityError(
                f"no multimodal plugin handles {data_key!r}; known modalities: {sorted(self._plugins)} "
                f"(add one with register_plugin)"
            )
        return plugin

    # -- registration decorators -------------------------------------------------

    def register_input_mapper(self, data_key: str, mapper: InputMapper | None = None) -> Callable[[type], type]:
        """Decorator: register ``mapper`` for modality ``data_key`` on a model class (None: the default)."""
        return self._get_plugin(data_key).register_input_mapper(mapper)

    def register_image_input_mapper(self, mapper: InputMapper | None = None) -> Callable[[type], type]:
        """Decorator: register an image input mapper on a model class (None: the HF image processor)."""
        return self.register_input_mapper("image", mapper)

    def register_max_multimodal_tokens(
        self, data_key: str, max_mm_tokens: MaxTokens | None = None
    ) -> Callable[[type], type]:
        """Decorator: register the most tokens one ``data_key`` item can become, on a model class."""
        return self._get_plugin(data_key).register_max_multimodal_tokens(max_mm_tokens)

    def register_max_image_tokens(self, max_mm_tokens: MaxTokens | None = None) -> Callable[[type], type]:
        """Decorator: register the most tokens one image can become, on a model class."""
        return self.register_max_multimodal_tokens("image", max_mm_tokens)

    # -- limits --------------------------------------------------------------------

    def init_mm_limits_per_prompt(self, model_config: ModelConfig) -> Mapping[str, int]:
        """Validate and return the model's limits per prompt.

        Differs from vLLM, which stores the limits in the registry: nothing is
        stored here; the limits are a pure function of the model config, so this
        is ``get_mm_limits_per_prompt`` and is kept for vLLM users.
        """
        return self.get_mm_limits_per_prompt(model_config)

    def get_mm_limits_per_prompt(self, model_config: ModelConfig) -> Mapping[str, int]:
        """Most items of each modality one prompt may carry: the config's value, default 1.

        Raises:
          UnknownModalityError: a limit names a modality no plugin handles.
          ValueError: a limit that is not an int >= 0.
        """
        configured = model_config.limit_mm_per_prompt
        for key, limit in configured.items():
            self._get_plugin(key)
            if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
                raise ValueError(
                    f"limit_mm_per_prompt[{key!r}] for {model_config.name} must be an int >= 0, got {limit!r}"
                )
        return MappingProxyType({key: configured.get(key, 1) for key in self._plugins})

    def takes_modality(self, model_config: ModelConfig, data_key: str) -> bool:
        """Whether the model registered an input mapper for ``data_key`` (i.e. takes that input at all)."""
        return data_key in hooks_of(model_config.model_cls).input_mappers

    def count_items(self, data_key: str, data: object) -> int:
        """How many items ``data`` of modality ``data_key`` holds (a video's list of frames is one item)."""
        plugin = self._plugins.get(data_key)
        return plugin.count_items(data) if plugin is not None else count_items(data)

    def parse_mm_data(self, data: MultiModalDataDict, model_config: ModelConfig | None = None) -> dict[str, Any]:
        """``data`` with each modality in the form its plugin hands to hooks (``MultiModalPlugin.parse_data``).

        With ``model_config``, a modality the model does not take is refused first, before its data
        is looked at; without, keys no plugin handles are kept as they are (``check_mm_limits`` names them).

        Raises:
          TypeError: ``data`` is not a mapping; a plugin's type checks.
          UnknownModalityError / UnsupportedModalityError: see ``check_mm_limits`` (with ``model_config``).
          ValueError: a plugin's checks (a video of the wrong dtype or rank, ...), naming the item.
        """
        if not isinstance(data, Mapping):
            raise TypeError(
                f"multi_modal_data must be a dict such as {{'image': image}}, got {type(data).__name__}"
            )
        if model_config is not None:
            for key in data:
                self._check_modality_taken(model_config, key)
        return {key: self._plugins[key].parse_data(value) if key in self._plugins else value
                for key, value in data.items()}

    def _check_modality_taken(self, model_config: ModelConfig, key: str) -> None:
        if key not in self._plugins:
            raise UnknownModalityError(f"{model_config.name}: multi_modal_data has {key!r}, but no plugin "
                                       f"handles it; known modalities: {sorted(self._plugins)}")
        if not self.takes_modality(model_config, key):
            raise UnsupportedModalityError(
                f"no input mapper for {key!r} is registered for {model_config.name}: the model takes no "
                f"{key} input, but multi_modal_data has {key!r}")

    def check_mm_limits(
        self, model_config: ModelConfig, data: MultiModalDataDict, mm_processor_kwargs: Mapping[str, Any] | None = None
    ) -> None:
        """Raise if ``data`` holds a modality the model does not take, more items of a modality than the
        model allows per prompt, or an item beyond the ceilings of its plugin.

        ``mm_processor_kwargs``: the request's own (they may lower a plugin's ceilings, e.g. ``max_video_frames``).

        Raises:
          TypeError: ``data`` is not a mapping.
          UnknownModalityError: a key names a modality no plugin handles.
          KeyError (also a ValueError): the model registered no input mapper for a modality of ``data``.
          ValueError: too many items (the message names the modality, the limit and the count); an item
            beyond a ceiling.
        """
        if not isinstance(data, Mapping):
            raise TypeError(
                f"multi_modal_data must be a dict such as {{'image': image}}, got {type(data).__name__}"
            )
        limits = self.get_mm_limits_per_prompt(model_config)
        for key, value in data.items():
            self._check_modality_taken(model_config, key)
            count, limit = self._plugins[key].count_items(value), limits[key]
            if count > limit:
                disabled = " (the modality is disabled)" if limit == 0 else ""
                raise ValueError(
                    f"{model_config.name}: a prompt may carry at most {limit} {key} item(s){disabled}, "
                    f"but {count} were given; raise limit_mm_per_prompt[{key!r}] to allow more"
                )
            self._plugins[key].check_data(model_config, value, mm_processor_kwargs)

    # -- lookups -------------------------------------------------------------------

    def map_input(
        self,
        model_config: ModelConfig,
        data: MultiModalDataDict,
        mm_processor_kwargs: Mapping[str, Any] | None = None,
    ) -> MultiModalInputs:
        """Map every modality in ``data`` to model kwargs through the model's mappers.

        Raises:
          ValueError / UnknownModalityError / TypeError: see ``parse_mm_data``, ``check_mm_limits`` and
            ``MultiModalPlugin.map_input``; also when two modalities produce the same kwarg.
        """
        data = self.parse_mm_data(data, model_config)
        self.check_mm_limits(model_config, data, mm_processor_kwargs)
        self.warn_unaccepted_kwargs(model_config, mm_processor_kwargs)
        merged: dict[str, Any] = {}
        for key, value in data.items():
            outputs = self._plugins[key].map_input(model_config, value, mm_processor_kwargs)
            clash = sorted(set(outputs) & set(merged))
            if clash:
                raise ValueError(f"{model_config.name}: the {key} input mapper produced kwargs {clash} "
                                 f"that another modality's mapper also produced")
            merged.update(outputs)
        return MultiModalInputs(merged)

    def map_item(
        self, model_config: ModelConfig, data_key: str, item: object,
        mm_processor_kwargs: Mapping[str, Any] | None = None,
    ) -> MultiModalInputs:
        """Map one item of modality ``data_key`` alone (the model's mapper given that item, as for a prompt
        of one): the inputs of the engine's unit of encoding and caching. ``item`` is one entry of
        ``parse_mm_data``'s form, which a list never is (a list there holds several items).

        Raises: as ``MultiModalPlugin.map_input``; UnknownModalityError for a modality no plugin handles.
        """
        return self._get_plugin(data_key).map_input(model_config, item, mm_processor_kwargs)

    def create_input_mapper(self, model_config: ModelConfig) -> Callable[..., MultiModalInputs]:
        """``map_input`` bound to one model: ``mapper(data, mm_processor_kwargs=None)``."""
        return functools.partial(self.map_input, model_config)

    def get_max_tokens_per_item_by_modality(
        self, model_config: ModelConfig, mm_processor_kwargs: Mapping[str, Any] | None = None
    ) -> Mapping[str, int]:
        """Most tokens one item of each modality can become (0: the model does not take it)."""
        return MappingProxyType({
            key: plugin.get_max_multimodal_tokens(model_config, mm_processor_kwargs)
            for key, plugin in self._plugins.items()
        })

    def get_max_multimodal_tokens(
        self, model_config: ModelConfig, mm_processor_kwargs: Mapping[str, Any] | None = None
    ) -> int:
        """Most multimodal tokens one prompt can hold: sum over modalities of limit × per-item max.

        Used to size memory and to pick the largest shapes to compile.
        """
        self.warn_unaccepted_kwargs(model_config, mm_processor_kwargs)
        limits = self.get_mm_limits_per_prompt(model_config)
        per_item = self.get_max_tokens_per_item_by_modality(model_config, mm_processor_kwargs)
        return sum(limits[key] * per_item[key] for key in self._plugins)

    # -- mm_processor_kwargs -------------------------------------------------------

    def accepted_mm_processor_kwargs(self, model_config: ModelConfig) -> Keywords:
        """Keys accepted by at least one hook of the model (None: any key is accepted)."""
        hooks = hooks_of(model_config.model_cls)
        sets = [plugin.accepted_mm_processor_kwargs(model_config) for plugin in self._plugins.values()]
        if hooks.dummy_data_factory is not None:
            sets.append(accepted_keywords(hooks.dummy_data_factory, 3))
        if hooks.input_processor is not None:
            sets.append(accepted_keywords(hooks.input_processor, 2))
        return union_keywords(sets)

    def warn_unaccepted_kwargs(self, model_config: ModelConfig, mm_processor_kwargs: Mapping[str, Any] | None) -> None:
        """Warn about ``mm_processor_kwargs`` keys (model's and request's) that no hook accepts."""
        merged = merge_kwargs(model_config.mm_processor_kwargs, mm_processor_kwargs)
        if merged:
            warn_unaccepted(model_config.name, merged, self.accepted_mm_processor_kwargs(model_config))


MULTIMODAL_REGISTRY = MultiModalRegistry()
