"""Each constrained request's grammar state, and filling its row of the allowed-token bitmasks
(``mmjax.structured.bitmask``'s layout) with llguidance."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import llguidance
import llguidance.numpy
import numpy as np

from mmjax.structured.params import StructuredOutputsParams


class GrammarState:
    """Where one request's output stands in its grammar.

    Args:
      params: the request's constraint (kept for errors and outputs).
      matcher: a fresh llguidance matcher (``GrammarCompiler.compile``).
    """

    def __init__(self, params: StructuredOutputsParams, matcher: llguidance.LLMatcher):
        self.params, self.matcher = params, matcher

    def accept(self, token: int) -> None:
        """Advance past a sampled token; ``ValueError`` if the grammar forbids it (a sampled token never
        is: the mask allowed it)."""
        if not self.matcher.consume_token(int(token)):
            raise ValueError(f"token {token} breaks the request's {self.params.kind} constraint: "
                             f"{self.matcher.get_error()}")

    def check(self) -> None:
        """``ValueError`` if the matcher has failed (it then allows no token)."""
        if self.matcher.is_error():
            raise ValueError(f"the request's {self.params.kind} constraint failed: {self.matcher.get_error()}")

    @property
    def complete(self) -> bool:
        """Whether the output is finished: the grammar admits no further token (only the end of sequence)."""
        return self.matcher.is_stopped()

    @property
    def accepting(self) -> bool:
        """Whether the output so far is a complete match (it may still go on)."""
        return self.matcher.is_accepting()


@functools.cache
def _executor() -> llguidance.LLExecutor:
    return llguidance.LLExecutor()


def fill_masks(masks: np.ndarray, states: Sequence[tuple[int, GrammarState]]) -> None:
    """Write each ``(row, state)``'s allowed tokens into ``masks[row]`` (uint32 ``[B, W]``, C-contiguous,
    ``W`` the grammar tokenizer's words), on llguidance's threads (the GIL dropped)."""
    if not states:
        return
    view = masks.view(np.int32)
    llguidance.numpy.fill_next_token_bitmask_par(_executor(), [(s.matcher, row) for row, s in states], view)
