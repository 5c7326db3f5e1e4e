"""The host-side state of one request as it moves through the engine."""

from __future__ import annotations

import dataclasses
import enum
import functools
from collections.abc import Mapping
from typing import Any

import numpy as np

from mmjax.kv_cache.prefix_hash import ItemSpan, hash_pages, salt_root
from mmjax.processing.token_runs import token_runs
from mmjax.registry import ProcessedPrompt


class RequestStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


def placeholder_rows(processed: ProcessedPrompt) -> np.ndarray:
    """For each prompt token, its row in the request's multimodal embeddings, or -1 for text.

    Rows follow the order ``multimodal_embeddings`` returns them: modality by modality, in the
    order of ``processed.placeholders`` (the input processor's), each modality's items in prompt
    order (so a prompt of images and videos reads all its image rows, then its video rows).
    """
    rows = np.full(len(processed.token_ids), -1, np.int32)
    next_row = 0
    for ranges in processed.placeholders.values():
        for offset, length in sorted(ranges):
            rows[offset:offset + length] = np.arange(next_row, next_row + length)
            next_row += length
    return rows


@dataclasses.dataclass(frozen=True, eq=False)
class EncoderItem:
    """One multimodal item of a request, as the engine encodes and caches it.

    Attributes:
      inputs: its mapped inputs (``ProcessedPrompt.mm_items``), encoded alone.
      num_rows: its placeholder tokens: the first rows the encoder returns for it.
      key: its item key (``ProcessedPrompt.mm_keys``); None: its embeddings are never shared.
    """

    inputs: Mapping[str, Any]
    num_rows: int
    key: str | None


def encoder_items(processed: ProcessedPrompt) -> tuple[EncoderItem, ...]:
    """The prompt's items in the order of their rows (``placeholder_rows``): modality by modality, each
    modality's items in prompt order, so the request's rows are its items' rows one after another."""
    items = []
    for modality, ranges in processed.placeholders.items():
        mapped = processed.mm_items.get(modality, ())
        keys = processed.mm_keys.get(modality) or (None,) * len(ranges)
        if len(mapped) != len(ranges) or len(keys) != len(ranges):
            raise ValueError(f"{len(ranges)} {modality} placeholder runs, but {len(mapped)} mapped items and "
                             f"{len(keys)} keys: the prompt must give one of each per item")
        order = sorted(range(len(ranges)), key=lambda i: ranges[i].offset)
        items += [EncoderItem(mapped[i], ranges[i].length, keys[i]) for i in order]
    return tuple(items)


def bidirectional_spans(token_ids: np.ndarray, token_id: int | None) -> tuple[tuple[int, int], ...]:
    """Each maximal run ``[start, stop)`` of ``token_id`` in the prompt: tokens that attend to each other in
    both directions (Gemma 3's image soft tokens, transformers' ``token_type_ids`` groups); () when None."""
    return () if token_id is None else token_runs(token_ids, token_id)


def item_spans(processed: ProcessedPrompt) -> tuple[ItemSpan, ...] | None:
    """Each item's placeholder run with the item's key; None when an item has no key (never shared)."""
    spans = []
    for modality, ranges in processed.placeholders.items():
        keys = processed.mm_keys.get(modality)
        if keys is None or len(keys) != len(ranges):
            return None
        spans += [ItemSpan(r.offset, r.length, key) for r, key in zip(ranges, keys)]
    return tuple(sorted(spans))


@dataclasses.dataclass(eq=False)
class Request:
    """One prompt being generated for. Mutable host bookkeeping; never enters ``jit``.

    Attributes:
      prompt_token_ids: i32 ``[L]``, placeholders expanded.
      mm_rows: i32 ``[L]``, see ``placeholder_rows``.
      mm_slots: i32 ``[M]``, the rows of the device's embedding arena that hold the
        request's placeholder embeddings (its items' rows one after another), while its prefill
        runs (None before and after).
      seed: the sampling seed (the user's, or one drawn when the request arrived).
      num_computed_tokens: tokens whose K/V are in the cache.
      replica: the data-parallel replica whose pages hold its K/V (None while waiting).
      error: why the request failed (``finish_reason == "error"``), else None.
      item_spans: its items' placeholder runs and keys (``item_spans``); None: its pages are never shared.
      bidirectional_spans: its prompt's runs of tokens that see each other (``bidirectional_spans``): a
        prefill chunk never ends inside one.
      grammar: where its output stands in its ``structured_outputs`` constraint
        (``mmjax.structured.masks.GrammarState``); None for a free request.
    """

    request_id: str
    processed: ProcessedPrompt
    params: Any  # SamplingParams
    seed: int
    detokenizer: Any
    arrival: int
    mm_rows: np.ndarray
    output_token_ids: list[int] = dataclasses.field(default_factory=list)
    num_computed_tokens: int = 0
    mm_slots: np.ndarray | None = None
    status: RequestStatus = RequestStatus.WAITING
    logprobs: list[dict] | None = None
    cumulative_logprob: float | None = None  # 0.0 to start with when the request asked for logprobs
    prompt_logprobs: list[dict | None] | None = None
    finish_reason: str | None = None
    stop_reason: str | int | None = None
    num_preemptions: int = 0
    replica: int | None = None
    error: str | None = None
    item_spans: tuple[ItemSpan, ...] | None = ()
    bidirectional_spans: tuple[tuple[int, int], ...] = ()
    grammar: Any = None  # mmjax.structured.masks.GrammarState
    _page_hashes: list[bytes] = dataclasses.field(default_factory=list, repr=False)

    @property
    def prompt_token_ids(self) -> np.ndarray:
        return self.processed.token_ids

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.processed.token_ids)

    @property
    def num_tokens(self) -> int:
        """Prompt plus generated tokens: what a (re)computation must cover."""
        return self.num_prompt_tokens + len(self.output_token_ids)

    @property
    def max_num_tokens(self) -> int:
        """The longest this request may grow: its prompt and ``max_tokens`` (the prompt alone without params)."""
        return self.num_prompt_tokens + getattr(self.params, "max_tokens", 0)

    def token_ids(self, start: int, stop: int) -> np.ndarray:
        """Tokens ``[start, stop)`` of prompt + output."""
        prompt = self.processed.token_ids
        if stop <= len(prompt):
            return prompt[start:stop]
        output = np.asarray(self.output_token_ids, np.int32)
        return np.concatenate([prompt, output])[start:stop]

    def rope_positions(self, start: int, stop: int, axes: int) -> np.ndarray:
        """The rotary positions ``int32[axes, stop - start]`` of tokens ``[start, stop)``.

        The prompt's own (``ProcessedPrompt.rope_positions``, M-RoPE) where it has them, else each
        token's index; a generated token at index ``i`` (decode, or recomputed after preemption)
        turns by ``i + rope_delta`` on every axis.
        """
        prompt = self.processed.rope_positions
        out = np.empty((axes, stop - start), np.int32)
        split = min(max(start, self.num_prompt_tokens), stop)
        if prompt is not None and split > start:
            out[:, :split - start] = prompt[:, start:split]
        else:
            split = start
        out[:, split - start:] = np.arange(split, stop, dtype=np.int32) + np.int32(self.processed.rope_delta)
        return out

    def page_hashes(self, num_pages: int, page_size: int) -> list[bytes]:
        """The prefix-cache hashes of its first ``num_pages`` full pages (``prefix_hash.hash_pages``).

        Computed once and extended as tokens come (generated tokens fill pages too).
        """
        have = len(self._page_hashes)
        if num_pages > have:
            tokens = self.token_ids(have * page_size, num_pages * page_size)
            parent = self._page_hashes[-1] if have else salt_root(getattr(self.processed, "cache_salt", None))
            self._page_hashes += hash_pages(parent, tokens, have * page_size,
                                            page_size, self.item_spans or ())
        return self._page_hashes[:num_pages]

    @property
    def shares_pages(self) -> bool:
        """Whether its pages may be registered in the prefix cache (every item has a key)."""
        return self.item_spans is not None

    @property
    def reuses_pages(self) -> bool:
        """Whether it may start from cached pages: not when every prompt token's logits are wanted."""
        return self.shares_pages and getattr(self.params, "prompt_logprobs", None) is None

    @functools.cached_property
    def encoder_items(self) -> tuple[EncoderItem, ...]:
        """Its items as the encoder takes them, in the order of its rows (``encoder_items``)."""
        return encoder_items(self.processed)

    @functools.cached_property
    def placeholder_end(self) -> int:
        """One past its last placeholder token (0 without any): the prefill needs embeddings before it."""
        where = np.nonzero(self.mm_rows >= 0)[0]
        return int(where[-1]) + 1 if where.size else 0

    @property
    def needs_mm_embeds(self) -> bool:
        return self.mm_slots is None and bool(self.processed.mm_items)

    @property
    def finished(self) -> bool:
        return self.status is RequestStatus.FINISHED
