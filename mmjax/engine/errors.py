"""The errors the engine raises to its callers: a refused prompt, a failed step."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class PromptError(ValueError):
    """A prompt of a ``generate`` call was refused before it ran; ``index`` says which, ``error`` why
    (``during``: what was being done, when not the mapping itself)."""

    def __init__(self, index: int, error: Exception, during: str | None = None):
        where = f"{during}: " if during else ""
        super().__init__(f"prompt {index}: {where}{type(error).__name__}: {error}")
        self.index, self.error = index, error


class StepError(RuntimeError):
    """A step failed; the requests it could not continue were finished with ``finish_reason == "error"``.

    The engine is consistent again when this is raised: the failed requests hold
    no pages, the other requests of the step were preempted (recomputed later),
    and on a lost device buffer the KV cache was rebuilt as a fresh engine's.

    Attributes:
      requests: the failed requests (each with ``.error`` set).
      error: the exception that failed the step.
    """

    def __init__(self, requests: Sequence[Any], error: BaseException):
        ids = ", ".join(r.request_id for r in requests)
        super().__init__(f"request(s) {ids} failed: {type(error).__name__}: {error}")
        self.requests, self.error = tuple(requests), error
