"""``InputRegistry``: dummy data for profiling and input processors, per model class.

Like ``MultiModalRegistry``, it holds no state: the decorators attach a new
frozen hooks value to the model class, and every lookup is a pure function of
the model config. Its outputs are validated against the multimodal registry,
so a dummy-data factory or an input processor that disagrees with the model's
max-token count fails loudly, naming the model, the modality and the numbers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any

from mmjax.registry.config import InputContext, ModelConfig
from mmjax.registry.hooks import hooks_of, with_hook
from mmjax.registry.inputs import PlaceholderRange
from mmjax.registry.multimodal import MULTIMODAL_REGISTRY, MultiModalRegistry
from mmjax.registry.processor_kwargs import merge_kwargs, select_kwargs
from mmjax.registry.prompts import DecoderOnlyInputs

DummyDataFactory = Callable[..., "DummyData"]
InputProcessor = Callable[..., DecoderOnlyInputs]


@dataclasses.dataclass(frozen=True, kw_only=True)
class DummyData:
    """Worst-case inputs used to size memory and to compile (vLLM's ``DummyData``).

    Attributes:
      prompt_token_ids: the dummy token ids, at least ``seq_len`` of them.
      multi_modal_data: dummy items, at least the per-prompt limit of each modality.
      multi_modal_placeholders: modality → one ``PlaceholderRange`` per item.
    """

    prompt_token_ids: tuple[int, ...]
    multi_modal_data: Mapping[str, Any] = dataclasses.field(default_factory=lambda: MappingProxyType({}))
    multi_modal_placeholders: Mapping[str, Sequence[PlaceholderRange]] = dataclasses.field(
        default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        object.__setattr__(self, "prompt_token_ids", tuple(int(t) for t in self.prompt_token_ids))


def _default_dummy_data(ctx: InputContext, seq_len: int, mm_counts: Mapping[str, int]) -> DummyData:
    return DummyData(prompt_token_ids=(0,) * seq_len)


class InputRegistry:
    """Registers and applies the input hooks of model classes (vLLM's ``InputRegistry``)."""

    def register_dummy_data(self, factory: DummyDataFactory) -> Callable[[type], type]:
        """Decorator: register ``factory(ctx, seq_len, mm_counts, **mm_processor_kwargs) -> DummyData``.

        The dummy data must hold ``seq_len`` tokens and, for each modality, as many
        items as the limit per prompt, each with the max token count registered
        for it. Nothing global changes: the class gets a new frozen hooks value.
        """
        if not callable(factory):
            raise TypeError(f"dummy data factory must be callable, got {factory!r}")
        return lambda cls: with_hook(cls, "dummy_data_factory", factory, "a dummy data factory")

    def register_input_processor(self, processor: InputProcessor) -> Callable[[type], type]:
        """Decorator: register ``processor(ctx, inputs, **mm_processor_kwargs) -> DecoderOnlyInputs``.

        The processor typically expands each multimodal marker into the item's
        placeholder tokens and records their ``multi_modal_placeholders``.
        """
        if not callable(processor):
            raise TypeError(f"input processor must be callable, got {processor!r}")
        return lambda cls: with_hook(cls, "input_processor", processor, "an input processor")

    def dummy_data_for_profiling(
        self,
        model_config: ModelConfig,
        seq_len: int,
        mm_registry: MultiModalRegistry = MULTIMODAL_REGISTRY,
        mm_processor_kwargs: Mapping[str, Any] | None = None,
    ) -> DummyData:
        """The model's worst-case dummy data, validated.

        Raises:
          ValueError: fewer tokens than ``seq_len``, fewer items than the limit, or
            placeholder counts that disagree with the registered max tokens.
        """
        factory = hooks_of(model_config.model_cls).dummy_data_factory or _default_dummy_data
        mm_counts = mm_registry.get_mm_limits_per_prompt(model_config)
        mm_registry.warn_unaccepted_kwargs(model_config, mm_processor_kwargs)
        kwargs = select_kwargs(merge_kwargs(model_config.mm_processor_kwargs, mm_processor_kwargs), factory, skip=3)
        dummy = factory(InputContext(model_config), seq_len, mm_counts, **kwargs)
        if not isinstance(dummy, DummyData):
            raise TypeError(f"the dummy data factory of {model_config.name} returned "
                            f"{type(dummy).__name__}, expected DummyData")
        if len(dummy.prompt_token_ids) < seq_len:
            raise ValueError(f"{model_config.name}: expected at least {seq_len} dummy tokens for profiling, "
                             f"but the dummy data factory returned {len(dummy.prompt_token_ids)}")
        self._check_dummy_items(model_config, dummy, mm_registry, mm_counts, mm_processor_kwargs)
        return dummy

    def _check_dummy_items(
        self, model_config: ModelConfig, dummy: DummyData, mm_registry: MultiModalRegistry,
        mm_counts: Mapping[str, int], mm_processor_kwargs: Mapping[str, Any] | None,
    ) -> None:
        max_tokens = mm_registry.get_max_tokens_per_item_by_modality(model_config, mm_processor_kwargs)
        for key, limit in mm_counts.items():
            if limit == 0 or max_tokens[key] == 0:
                continue
            items = dummy.multi_modal_data.get(key)
            found = 0 if items is None else mm_registry.count_items(key, items)
            if found < limit:
                raise ValueError(f"{model_config.name}: expected at least {limit} dummy {key!r} items for "
                                 f"profiling (the limit per prompt), but the dummy data has {found}")
            ranges = tuple(dummy.multi_modal_placeholders.get(key, ()))
            _check_placeholders(model_config, key, ranges, found, max_tokens[key], len(dummy.prompt_token_ids))
            total = sum(r.length for r in ranges)
            if total < limit * max_tokens[key]:
                raise ValueError(
                    f"{model_config.name}: the dummy data must hold {limit} x {max_tokens[key]} = "
                    f"{limit * max_tokens[key]} {key} tokens (limit x max tokens per item) to size memory "
                    f"for the worst case, but its placeholders hold {total}"
                )

    def process_input(
        self,
        model_config: ModelConfig,
        inputs: DecoderOnlyInputs,
        mm_registry: MultiModalRegistry = MULTIMODAL_REGISTRY,
    ) -> DecoderOnlyInputs:
        """Apply the model's input processor (identity when none is registered), then validate.

        Raises:
          ValueError: the processor's placeholders disagree with the items or the max tokens.
        """
        mm_registry.warn_unaccepted_kwargs(model_config, inputs.mm_processor_kwargs)
        processor = hooks_of(model_config.model_cls).input_processor
        if processor is None:
            return inputs
        merged = merge_kwargs(model_config.mm_processor_kwargs, inputs.mm_processor_kwargs)
        processed = processor(InputContext(model_config), inputs, **select_kwargs(merged, processor, skip=2))
        if not isinstance(processed, DecoderOnlyInputs):
            raise TypeError(f"the input processor of {model_config.name} returned "
                            f"{type(processed).__name__}, expected DecoderOnlyInputs")
        self._check_processed(model_config, processed, mm_registry)
        return processed

    def _check_processed(
        self, model_config: ModelConfig, processed: DecoderOnlyInputs, mm_registry: MultiModalRegistry
    ) -> None:
        max_tokens = mm_registry.get_max_tokens_per_item_by_modality(model_config, processed.mm_processor_kwargs)
        for key, items in processed.multi_modal_data.items():
            ranges, num_items = processed.multi_modal_placeholders.get(key), mm_registry.count_items(key, items)
            if ranges is None:
                raise ValueError(f"the input processor of {model_config.name} recorded no placeholders "
                                 f"for the {num_items} {key} item(s) of the prompt")
            _check_placeholders(model_config, key, ranges, num_items,
                                max_tokens.get(key, 0), len(processed.prompt_token_ids))
        extra = sorted(set(processed.multi_modal_placeholders) - set(processed.multi_modal_data))
        if extra:
            raise ValueError(f"the input processor of {model_config.name} recorded placeholders for "
                             f"{extra}, but the prompt has no data for them")


def _check_placeholders(
    model_config: ModelConfig, key: str, ranges: Sequence[PlaceholderRange],
    num_items: int, max_tokens: int, num_tokens: int,
) -> None:
    """Ranges must be one per item, each within [1, max_tokens], inside the prompt, in order, disjoint."""
    if len(ranges) != num_items:
        raise ValueError(f"{model_config.name}: {num_items} {key} item(s) but {len(ranges)} placeholder "
                         f"range(s); expected one range per item")
    end = 0
    for i, (offset, length) in enumerate(ranges):
        if max_tokens and not 1 <= length <= max_tokens:
            raise ValueError(
                f"{model_config.name}: {key} item {i} has {length} placeholder tokens, but the model's "
                f"max {key} tokens per item is {max_tokens} (and at least 1 is needed)"
            )
        if offset < end or offset + length > num_tokens:
            raise ValueError(
                f"{model_config.name}: {key} item {i} placeholders [{offset}, {offset + length}) overlap "
                f"the previous item or fall outside the {num_tokens} prompt tokens"
            )
        end = offset + length


INPUT_REGISTRY = InputRegistry()
