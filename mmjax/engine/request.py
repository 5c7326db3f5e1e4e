"""The host-side state of one request as it moves through the engine."""

from __future__ import annotations

import dataclasses
import enum
from typing import Any

import numpy as np

from mmjax.registry import ProcessedPrompt


class RequestStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


def placeholder_rows(processed: ProcessedPrompt) -> np.ndarray:
    """For each prompt token, its row in the request's multimodal embeddings, or -1 for text.

    Rows follow placeholder order (the order ``multimodal_embeddings`` returns them).
    """
    rows = np.full(len(processed.token_ids), -1, np.int32)
    ranges = sorted(r for ranges in processed.placeholders.values() for r in ranges)
    next_row = 0
    for offset, length in ranges:
        rows[offset:offset + length] = np.arange(next_row, next_row + length)
        next_row += length
    return rows


@dataclasses.dataclass(eq=False)
class Request:
    """One prompt being generated for. Mutable host bookkeeping; never enters ``jit``.

    Attributes:
      prompt_token_ids: i32 ``[L]``, placeholders expanded.
      mm_rows: i32 ``[L]``, see ``placeholder_rows``.
      mm_slots: i32 ``[M]``, the rows of the device's embedding arena that hold the
        request's placeholder embeddings, while its prefill runs (None before and after).
      seed: the sampling seed (the user's, or one drawn when the request arrived).
      num_computed_tokens: tokens whose K/V are in the cache.
      replica: the data-parallel replica whose pages hold its K/V (None while waiting).
      error: why the request failed (``finish_reason == "error"``), else None.
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
    cumulative_logprob: float = 0.0
    prompt_logprobs: list[dict | None] | None = None
    finish_reason: str | None = None
    stop_reason: str | int | None = None
    num_preemptions: int = 0
    replica: int | None = None
    error: str | None = None

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

    def token_ids(self, start: int, stop: int) -> np.ndarray:
        """Tokens ``[start, stop)`` of prompt + output."""
        prompt = self.processed.token_ids
        if stop <= len(prompt):
            return prompt[start:stop]
        output = np.asarray(self.output_token_ids, np.int32)
        return np.concatenate([prompt, output])[start:stop]

    @property
    def needs_mm_embeds(self) -> bool:
        return self.mm_slots is None and bool(self.processed.mm_kwargs)

    @property
    def finished(self) -> bool:
        return self.status is RequestStatus.FINISHED
