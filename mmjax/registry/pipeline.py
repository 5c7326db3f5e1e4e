"""From a user prompt to model inputs: parse, tokenize, check limits, process, map.

``process_prompt`` is the one path every prompt takes before the engine sees
it, so a text prompt and the same prompt as token ids give identical results.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

from mmjax.registry.config import InputContext, ModelConfig
from mmjax.registry.input_registry import INPUT_REGISTRY, InputRegistry
from mmjax.registry.inputs import MultiModalInputs, PlaceholderRange
from mmjax.registry.multimodal import MULTIMODAL_REGISTRY, MultiModalRegistry
from mmjax.registry.prompts import DecoderOnlyInputs, PromptInputs, parse_prompt


@dataclasses.dataclass(frozen=True, eq=False)
class ProcessedPrompt:
    """A prompt ready for the engine.

    Attributes:
      token_ids: i32 ``[L]``, placeholders expanded.
      placeholders: modality → one ``PlaceholderRange`` per item, in order.
      mm_kwargs: the forward kwargs of the multimodal data (a PyTree of arrays).
      prompt: the prompt text, when the user gave text.
    """

    token_ids: np.ndarray
    placeholders: Mapping[str, tuple[PlaceholderRange, ...]]
    mm_kwargs: MultiModalInputs
    prompt: str | None = None

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
) -> ProcessedPrompt:
    """Turn one user prompt into token ids, placeholder ranges and multimodal kwargs.

    Raises:
      TypeError / ValueError: a malformed prompt, too many items, token ids outside
        the vocabulary, a prompt longer than the context, or hook outputs that
        disagree with the registered max tokens — each naming what was wrong.
    """
    parsed = parse_prompt(prompt)
    mm_registry.check_mm_limits(model_config, parsed.multi_modal_data)
    token_ids = parsed.token_ids if parsed.token_ids is not None else tokenize(model_config, parsed.text, tokenizer)
    _check_vocab(model_config, token_ids)
    inputs = DecoderOnlyInputs(
        prompt_token_ids=token_ids,
        prompt=parsed.text,
        multi_modal_data=parsed.multi_modal_data,
        mm_processor_kwargs=parsed.mm_processor_kwargs,
    )
    processed = input_registry.process_input(model_config, inputs, mm_registry)
    _check_length(model_config, processed)
    mm_kwargs = (
        mm_registry.map_input(model_config, processed.multi_modal_data, processed.mm_processor_kwargs)
        if processed.multi_modal_data else MultiModalInputs()
    )
    return ProcessedPrompt(
        token_ids=np.asarray(processed.prompt_token_ids, dtype=np.int32),
        placeholders=processed.multi_modal_placeholders,
        mm_kwargs=mm_kwargs,
        prompt=parsed.text,
    )


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
