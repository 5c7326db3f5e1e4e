"""Qwen-VL's multimodal rotary positions (M-RoPE) of a prompt, on the host.

Every token has three positions: temporal, height, width. A text token has its
running index on all three. A vision item whose merged grid is ``(t, h, w)``
starting at running index ``s`` gives its token ``(i, j, k)`` the positions
``(s + floor(i * time_interval), s + j, s + k)``; the running index then moves
on by ``max(h, w)`` (transformers 5's ``get_rope_index``; earlier releases and
vLLM moved it past the largest position, which differs for videos whose time
interval spreads the temporal positions: mmjax follows transformers).
A generated token at index ``i >= L`` has ``i + delta`` on every axis, where
``delta = max position + 1 - L``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class VisionSpan:
    """One vision item's placeholder run and its merged grid.

    Attributes:
      offset: the index of its first placeholder token in the prompt.
      grid: ``(t, h, w)`` in merged units: ``t * h * w`` placeholder tokens.
      time_interval: how far apart its temporal positions are (1 for an image; Qwen2.5-VL's
        videos: ``tokens_per_second * second_per_grid_t``).
    """

    offset: int
    grid: tuple[int, int, int]
    time_interval: float = 1.0

    @property
    def length(self) -> int:
        t, h, w = self.grid
        return t * h * w


def mrope_positions(num_tokens: int, spans: Sequence[VisionSpan]) -> tuple[np.ndarray, int]:
    """``(positions int32[3, L], delta)`` of a prompt of ``L = num_tokens`` tokens with these vision items.

    Raises:
      ValueError: spans that overlap or run past the prompt.
    """
    positions = np.zeros((3, num_tokens), np.int64)
    cursor, running = 0, 0  # the next token, and the running index it gets if it is text
    for span in sorted(spans, key=lambda s: s.offset):
        if span.offset < cursor or span.offset + span.length > num_tokens:
            raise ValueError(f"a vision item's placeholders [{span.offset}, {span.offset + span.length}) overlap "
                             f"another's or run past the prompt of {num_tokens} tokens")
        text = span.offset - cursor
        positions[:, cursor:span.offset] = running + np.arange(text)
        running += text
        positions[:, span.offset:span.offset + span.length] = running + _grid_positions(span)
        running += max(span.grid[1], span.grid[2])
        cursor = span.offset + span.length
    positions[:, cursor:] = running + np.arange(num_tokens - cursor)
    delta = int(positions.max()) + 1 - num_tokens if num_tokens else 0
    return positions.astype(np.int32), delta


def _grid_positions(span: VisionSpan) -> np.ndarray:
    """``int64[3, t*h*w]``: each token's (temporal, row, column) before the offset, row-major."""
    t, h, w = span.grid
    # float32 as torch computes arange(t) * interval, truncated toward zero by .long()
    temporal = (np.arange(t, dtype=np.float32) * np.float32(span.time_interval)).astype(np.int64)
    grid = np.meshgrid(temporal, np.arange(h), np.arange(w), indexing="ij")
    return np.stack([g.reshape(-1) for g in grid])


def decode_positions(indices: np.ndarray, delta: int) -> np.ndarray:
    """``int32[3, n]`` M-RoPE positions of generated tokens at these sequence indices."""
    return np.broadcast_to(np.asarray(indices, np.int32) + np.int32(delta), (3, len(indices))).astype(np.int32)
