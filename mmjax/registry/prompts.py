"""Prompt types (text or token ids, with multimodal data) and the inputs processors see."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, NotRequired, TypedDict, Union

import numpy as np

from mmjax.registry.inputs import MultiModalDataDict, PlaceholderRange


class TextPrompt(TypedDict):
    """A text prompt: ``{"prompt": "USER: <image>\\nWhat is this? ASSISTANT:", "multi_modal_data": {...}}``."""

    prompt: str
    multi_modal_data: NotRequired[MultiModalDataDict]
    mm_processor_kwargs: NotRequired[dict[str, Any]]
    multi_modal_uuids: NotRequired[dict[str, Union[str, None, list[Union[str, None]]]]]
    cache_salt: NotRequired[str]


class TokensPrompt(TypedDict):
    """A prompt already tokenized: ``{"prompt_token_ids": [1, 3148, ...], "multi_modal_data": {...}}``."""

    prompt_token_ids: list[int]
    multi_modal_data: NotRequired[MultiModalDataDict]
    mm_processor_kwargs: NotRequired[dict[str, Any]]
    multi_modal_uuids: NotRequired[dict[str, Union[str, None, list[Union[str, None]]]]]
    cache_salt: NotRequired[str]


#: What a user passes as one prompt: a plain string, a ``TextPrompt`` or a ``TokensPrompt``.
PromptInputs = Union[str, TextPrompt, TokensPrompt]

_PROMPT_KEYS = frozenset({"prompt", "prompt_token_ids", "multi_modal_data", "mm_processor_kwargs",
                          "multi_modal_uuids", "cache_salt"})


@dataclasses.dataclass(frozen=True, kw_only=True)
class DecoderOnlyInputs:
    """A prompt as input processors see it and return it (vLLM's ``DecoderOnlyInputs``).

    Frozen: a processor returns a new value, e.g. with ``dataclasses.replace``.

    Attributes:
      prompt_token_ids: the token ids, i32 ``[L]`` as a tuple.
      prompt: the prompt text when the user gave text (kept for display only).
      multi_modal_data: the raw multimodal data, modality → item or list of items.
      mm_processor_kwargs: the request's own ``mm_processor_kwargs``.
      multi_modal_placeholders: modality → one ``PlaceholderRange`` per item, in
        order; filled in by the input processor that inserts placeholder tokens.
    """

    prompt_token_ids: tuple[int, ...]
    prompt: str | None = None
    multi_modal_data: Mapping[str, Any] = dataclasses.field(default_factory=lambda: MappingProxyType({}))
    mm_processor_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=lambda: MappingProxyType({}))
    multi_modal_placeholders: Mapping[str, tuple[PlaceholderRange, ...]] = dataclasses.field(
        default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        object.__setattr__(self, "prompt_token_ids", _as_token_ids(self.prompt_token_ids, "prompt_token_ids"))
        object.__setattr__(self, "multi_modal_data", MappingProxyType(dict(self.multi_modal_data)))
        object.__setattr__(self, "mm_processor_kwargs", MappingProxyType(dict(self.mm_processor_kwargs)))
        placeholders = {
            key: tuple(PlaceholderRange(int(o), int(n)) for o, n in ranges)
            for key, ranges in self.multi_modal_placeholders.items()
        }
        object.__setattr__(self, "multi_modal_placeholders", MappingProxyType(placeholders))


def _as_token_ids(ids: object, what: str) -> tuple[int, ...]:
    if isinstance(ids, np.ndarray):
        if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
            raise TypeError(f"{what} must be a 1-D integer array, got {ids.dtype} with shape {ids.shape}")
        return tuple(int(i) for i in ids)
    if not isinstance(ids, Sequence) or isinstance(ids, (str, bytes)):
        raise TypeError(f"{what} must be a list of ints, got {type(ids).__name__}")
    bad = [(i, t) for i, t in enumerate(ids) if isinstance(t, bool) or not isinstance(t, (int, np.integer))]
    if bad:
        i, t = bad[0]
        raise TypeError(f"{what}[{i}] must be an int token id, got {type(t).__name__} {t!r}")
    return tuple(int(t) for t in ids)


@dataclasses.dataclass(frozen=True)
class ParsedPrompt:
    """A user prompt taken apart: exactly one of ``text`` and ``token_ids`` is set.

    ``cache_salt``: a tenant's salt (vLLM's field); prompts of different salts share no cached
    mapped input, encoder output or KV page, so no tenant can time another's images or prompts.
    """

    text: str | None
    token_ids: tuple[int, ...] | None
    multi_modal_data: Mapping[str, Any]
    mm_processor_kwargs: Mapping[str, Any]
    multi_modal_uuids: Mapping[str, tuple[str | None, ...]] = dataclasses.field(default_factory=dict)
    cache_salt: str | None = None


def _check_text(text: str) -> str:
    """``text``, if it can be encoded as UTF-8 (what a tokenizer needs); else a ValueError naming where."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        bad = text[err.start:err.end]
        raise ValueError(f"the prompt text is not valid Unicode: {bad!r} at character {err.start} "
                         f"({err.reason}); lone surrogates often come from decoding bytes with "
                         f"errors='surrogateescape' — decode the text as UTF-8 first") from None
    return text


def parse_prompt(
    prompt: PromptInputs, parse_mm_data: Callable[[Mapping[str, Any]], Mapping[str, Any]] | None = None,
) -> ParsedPrompt:
    """Check the shape of a user prompt and take it apart.

    ``parse_mm_data``: brings ``multi_modal_data`` to the form hooks receive before its items are
    counted (``MultiModalRegistry.parse_mm_data``: one video given as a list of frames is one item).

    Raises:
      TypeError: not a str or a dict; wrong value types.
      ValueError: both or neither of ``prompt`` / ``prompt_token_ids``; unknown keys; text that
        is not valid Unicode (a lone surrogate).
    """
    if isinstance(prompt, str):
        return ParsedPrompt(_check_text(prompt), None, MappingProxyType({}), MappingProxyType({}), MappingProxyType({}))
    if not isinstance(prompt, Mapping):
        raise TypeError(
            f"a prompt must be a str, a {{'prompt': str, ...}} dict or a "
            f"{{'prompt_token_ids': [...], ...}} dict, got {type(prompt).__name__}"
        )
    unknown = sorted(set(prompt) - _PROMPT_KEYS)
    if unknown:
        raise ValueError(f"unknown prompt keys {unknown}; a prompt dict takes {sorted(_PROMPT_KEYS)}")
    has_text, has_ids = "prompt" in prompt, "prompt_token_ids" in prompt
    if has_text == has_ids:
        raise ValueError("a prompt dict needs exactly one of 'prompt' (text) and 'prompt_token_ids'")
    if has_text and not isinstance(prompt["prompt"], str):
        raise TypeError(f"'prompt' must be a str, got {type(prompt['prompt']).__name__}")
    if has_text:
        _check_text(prompt["prompt"])
    mm_data = prompt.get("multi_modal_data") or {}
    mm_kwargs = prompt.get("mm_processor_kwargs") or {}
    for name, value in (("multi_modal_data", mm_data), ("mm_processor_kwargs", mm_kwargs)):
        if not isinstance(value, Mapping):
            raise TypeError(f"'{name}' must be a dict, got {type(value).__name__}")
    token_ids = _as_token_ids(prompt["prompt_token_ids"], "prompt_token_ids") if has_ids else None
    if parse_mm_data is not None and mm_data:
        mm_data = parse_mm_data(mm_data)
    uuids = _parse_uuids(prompt.get("multi_modal_uuids") or {}, mm_data)
    salt = prompt.get("cache_salt")
    if salt is not None and (not isinstance(salt, str) or not salt):
        raise TypeError(f"'cache_salt' must be a non-empty str, got {type(salt).__name__}")
    return ParsedPrompt(
        prompt.get("prompt"), token_ids, MappingProxyType(dict(mm_data)), MappingProxyType(dict(mm_kwargs)),
        MappingProxyType(uuids), salt,
    )


def _parse_uuids(uuids: object, mm_data: Mapping[str, Any]) -> dict[str, tuple[str | None, ...]]:
    """``multi_modal_uuids`` as modality -> one id (or None: hash the item) per item of ``mm_data``.

    Raises:
      TypeError: not a dict, or an id that is not a non-empty str or None.
      ValueError: a modality the data lacks, or a different number of ids than items.
    """
    if not isinstance(uuids, Mapping):
        raise TypeError(f"'multi_modal_uuids' must be a dict such as {{'image': ['my-id']}}, "
                        f"got {type(uuids).__name__}")
    parsed = {}
    for key, ids in uuids.items():
        if key not in mm_data:
            raise ValueError(f"multi_modal_uuids has {key!r} but multi_modal_data has no {key!r} key; give the "
                             f"items (or None for an item already sent with its id) under the same key")
        data = mm_data[key]
        listed = isinstance(ids, list)
        ids = ids if listed else [ids]
        num_items = len(data) if isinstance(data, list) else 1
        if listed != isinstance(data, list) or len(ids) != num_items:
            raise ValueError(f"multi_modal_uuids[{key!r}] must give one id per {key} item: the data holds "
                             f"{num_items} item(s){' as a list' if isinstance(data, list) else ''}, "
                             f"the ids are {ids if listed else ids[0]!r}")
        for i, uid in enumerate(ids):
            if uid is not None and (not isinstance(uid, str) or not uid):
                raise TypeError(f"multi_modal_uuids[{key!r}][{i}] must be a non-empty str or None, got {uid!r}")
        parsed[key] = tuple(ids)
    return parsed
