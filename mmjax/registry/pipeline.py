"""From a user prompt to model inputs: parse, tokenize, check limits, process, map.

``process_prompt`` is the one path every prompt takes before the engine sees
it, so a text prompt and the same prompt as token ids give identical results.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from mmjax.registry.config import InputContext, ModelConfig
from mmjax.registry.input_registry import INPUT_REGISTRY, InputRegistry
from mmjax.registry.inputs import MultiModalInputs, PlaceholderRange
from mmjax.registry.item_keys import item_keys
from mmjax.registry.multimodal import MULTIMODAL_REGISTRY, MultiModalRegistry
from mmjax.registry.positions import prompt_rope_positions
from mmjax.registry.processor_cache import ProcessorCache
from mmjax.registry.processor_kwargs import merge_kwargs
from mmjax.registry.prompts import DecoderOnlyInputs, ParsedPrompt, PromptInputs, parse_prompt


@dataclasses.dataclass(frozen=True, eq=False)
class ProcessedPrompt:
    """A prompt ready for the engine.

    Attributes:
      token_ids: i32 ``[L]``, placeholders expanded.
      placeholders: modality → one ``PlaceholderRange`` per item, in order.
      mm_items: modality → each item mapped alone (``MultiModalRegistry.map_item``), in order: the
        engine's unit of encoding and caching (item ``i``'s rows fill ``placeholders[modality][i]``).
      prompt: the prompt text, when the user gave text.
      mm_keys: modality → one key per item, in order (``item_keys``): what the item's
        inputs, embeddings and placeholder KV depend on, for the caches.
      rope_positions: i32 ``[P, L]``, the rotary positions of a model that declares
        ``SupportsMRoPE`` (Qwen-VL: ``P = 3``); None: each token's index.
      rope_delta: what a token at index ``i >= L`` (generated) adds to ``i`` on every axis.
      cache_salt: the prompt's salt: in its item keys, and the root of its prefix-cache page hashes.
      map_together: maps every item in one call of each modality's mapper (``mm_kwargs``); None: no items.
    """

    token_ids: np.ndarray
    placeholders: Mapping[str, tuple[PlaceholderRange, ...]]
    mm_items: Mapping[str, tuple[MultiModalInputs, ...]] = dataclasses.field(default_factory=dict)
    prompt: str | None = None
    mm_keys: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    rope_positions: np.ndarray | None = None
    rope_delta: int = 0
    cache_salt: str | None = None
    map_together: Callable[[], MultiModalInputs] | None = dataclasses.field(default=None, repr=False)

    @functools.cached_property
    def mm_kwargs(self) -> MultiModalInputs:
        """The forward kwargs of all the prompt's items mapped together (a PyTree of arrays): what the dense
        forward (``LLM.logits``) and training take. Mapped when first read (the engine reads ``mm_items``)."""
        return self.map_together() if self.map_together is not None else MultiModalInputs()

    @property
    def num_mm_tokens(self) -> int:
        """Placeholder tokens over all items."""
        return sum(r.length for ranges in self.placeholders.values() for r in ranges)


def tokenize(model_config: ModelConfig, text: str, tokenizer: Any | None = None) -> tuple[int, ...]:
    """Token ids of ``text`` with the model's tokenizer (special tokens such as BOS added)."""
    tokenizer = tokenizer if tokenizer is not None else InputContext(model_config).get_tokenizer()
    return tuple(tokenizer(text).input_ids)


def process_prompt(
    model_config: ModelConfig,
    prompt: PromptInputs,
    *,
    tokenizer: Any | None = None,
    mm_registry: MultiModalRegistry = MULTIMODAL_REGISTRY,
    input_registry: InputRegistry = INPUT_REGISTRY,
    processor_cache: ProcessorCache | None = None,
) -> ProcessedPrompt:
    """Turn one user prompt into token ids, placeholder ranges and multimodal kwargs.

    ``processor_cache``: where the mapped inputs of earlier prompts' items are kept, and the
    items sent with an id (``multi_modal_uuids``); a prompt whose items are all there is not
    mapped again, and an item may then be given as None with its id.

    Raises:
      TypeError / ValueError: a malformed prompt, too many items, token ids outside
        the vocabulary, a prompt longer than the context, hook outputs that disagree
        with the registered max tokens, or an id naming no cached item while the prompt
        gives no data for it — each naming what was wrong.
    """
    parsed = parse_prompt(prompt, functools.partial(mm_registry.parse_mm_data, model_config=model_config))
    mm_registry.check_mm_limits(model_config, parsed.multi_modal_data, parsed.mm_processor_kwargs)
    mm_data, mm_keys = _resolve_items(model_config, parsed, processor_cache)
    token_ids = parsed.token_ids if parsed.token_ids is not None else tokenize(model_config, parsed.text, tokenizer)
    _check_vocab(model_config, token_ids)
    inputs = DecoderOnlyInputs(
        prompt_token_ids=token_ids,
        prompt=parsed.text,
        multi_modal_data=mm_data,
        mm_processor_kwargs=parsed.mm_processor_kwargs,
    )
    processed = input_registry.process_input(model_config, inputs, mm_registry)
    _check_length(model_config, processed)
    mm_items = _map_items(model_config, processed, mm_keys, mm_registry, processor_cache)
    map_together = functools.partial(_map_together, model_config, processed, mm_keys, mm_registry, processor_cache) \
        if processed.multi_modal_data else None
    token_ids = np.asarray(processed.prompt_token_ids, dtype=np.int32)
    placeholders = processed.multi_modal_placeholders
    rope_positions, rope_delta = prompt_rope_positions(InputContext(model_config), processed)
    return ProcessedPrompt(
        token_ids=token_ids,
        placeholders=placeholders,
        mm_items=mm_items,
        prompt=parsed.text,
        mm_keys=mm_keys,
        rope_positions=rope_positions,
        rope_delta=rope_delta,
        cache_salt=parsed.cache_salt,
        map_together=map_together,
    )


def _resolve_items(
    model_config: ModelConfig, parsed: ParsedPrompt, cache: ProcessorCache | None,
) -> tuple[dict[str, Any], dict[str, tuple[str, ...]]]:
    """The prompt's items (an item given as None taken from the cache by its id) and their keys.

    Items that come with an id are kept in the cache under it, for later prompts that send the id alone.
    """
    kwargs = merge_kwargs(model_config.mm_processor_kwargs, parsed.mm_processor_kwargs)
    data, keys = {}, {}
    for modality, value in parsed.multi_modal_data.items():
        items = list(value) if isinstance(value, list) else [value]
        uuids = parsed.multi_modal_uuids.get(modality, (None,) * len(items))
        for i, (item, uid) in enumerate(zip(items, uuids)):
            where = f"multi_modal_data[{modality!r}]" + (f"[{i}]" if isinstance(value, list) else "")
            if uid is None:
                if item is None:
                    raise ValueError(f"{where} is None and multi_modal_uuids gives it no id: give the item, "
                                     f"or the id of an item sent before")
                continue
            slot = ("item", model_config.model, modality, uid, parsed.cache_salt)
            if item is not None:
                if cache is not None and cache.enabled:
                    cache.put(slot, item)
                continue
            items[i] = cache.get(slot) if cache is not None and cache.enabled else None
            if items[i] is None:
                state = "is disabled (mm_processor_cache_gb=0)" if cache is None or not cache.enabled else \
                    "does not hold it (never sent with this id, or evicted)"
                raise ValueError(f"{where} is None and its id {uid!r} names no cached {modality} item: the "
                                 f"processor cache {state}; send the item itself with the id")
        data[modality] = items if isinstance(value, list) else items[0]
        try:
            keys[modality] = item_keys(modality, items, uuids, kwargs, parsed.cache_salt)
        except (TypeError, OSError, SyntaxError, ValueError):
            pass  # content hash_item cannot read (a plugin's own type; corrupt data the mapper will name): not cached
    return data, keys


def _map_items(
    model_config: ModelConfig, processed: DecoderOnlyInputs, mm_keys: Mapping[str, tuple[str, ...]],
    mm_registry: MultiModalRegistry, cache: ProcessorCache | None,
) -> dict[str, tuple[MultiModalInputs, ...]]:
    """Each item mapped alone, or its mapped inputs from the cache under its key (``item_keys``).

    A follow-up prompt that adds one image to earlier ones maps only that image.

    Raises:
      ValueError: the input processor recorded placeholder runs, but not one per item.
    """
    if not processed.multi_modal_data:
        return {}
    mm_registry.warn_unaccepted_kwargs(model_config, processed.mm_processor_kwargs)
    use_cache = cache is not None and cache.enabled
    mapped: dict[str, tuple[MultiModalInputs, ...]] = {}
    for modality, value in processed.multi_modal_data.items():
        items = value if isinstance(value, list) else [value]
        runs = processed.multi_modal_placeholders.get(modality, ())
        if runs and len(runs) != len(items):
            raise ValueError(f"{model_config.name}: the input processor recorded {len(runs)} placeholder runs for "
                             f"{len(items)} {modality} item(s); it must record one per item")
        keys = mm_keys.get(modality, (None,) * len(items))
        outputs = []
        for item, key in zip(items, keys):
            slot = ("mapped", model_config.model, key)
            inputs = cache.get(slot) if use_cache and key is not None else None
            if inputs is None:
                inputs = mm_registry.map_item(model_config, modality, item, processed.mm_processor_kwargs)
                if use_cache and key is not None:
                    cache.put(slot, inputs)
            outputs.append(inputs)
        mapped[modality] = tuple(outputs)
    return mapped


def _map_together(
    model_config: ModelConfig, processed: DecoderOnlyInputs, mm_keys: Mapping[str, tuple[str, ...]],
    mm_registry: MultiModalRegistry, cache: ProcessorCache | None,
) -> MultiModalInputs:
    """``map_input`` of all the prompt's data at once, or the same items' from the cache (kept per
    prompt's set of items: every modality, in order)."""
    if cache is None or not cache.enabled or set(mm_keys) != set(processed.multi_modal_data):
        return mm_registry.map_input(model_config, processed.multi_modal_data, processed.mm_processor_kwargs)
    slot = ("mapped-together", model_config.model, tuple(sorted(mm_keys.items())))
    mapped = cache.get(slot)
    if mapped is None:
        mapped = mm_registry.map_input(model_config, processed.multi_modal_data, processed.mm_processor_kwargs)
        cache.put(slot, mapped)
    return mapped


def _check_vocab(model_config: ModelConfig, token_ids: tuple[int, ...]) -> None:
    vocab = model_config.vocab_size
    if not token_ids:
        raise ValueError(f"{model_config.name}: the prompt is empty; it needs at least one token")
    bad = [(i, t) for i, t in enumerate(token_ids) if t < 0 or (vocab is not None and t >= vocab)]
    if bad:
        i, t = bad[0]
        raise ValueError(f"{model_config.name}: token id {t} at prompt position {i} is outside the "
                         f"vocabulary [0, {vocab})")


def _check_length(model_config: ModelConfig, processed: DecoderOnlyInputs) -> None:
    limit = model_config.context_length
    n = len(processed.prompt_token_ids)
    if limit is not None and n > limit:
        mm = sum(r.length for ranges in processed.multi_modal_placeholders.values() for r in ranges)
        raise ValueError(f"{model_config.name}: the prompt has {n} tokens after placeholder expansion "
                         f"({mm} of them multimodal placeholders), more than the context length {limit}")
