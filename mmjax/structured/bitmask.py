"""The allowed-token bitmasks the sampler applies, without llguidance (every sampled step builds one).

A mask row is ``ceil(V / 32)`` 32-bit words: bit ``v % 32`` of word ``v // 32`` set = token ``v``
allowed (llguidance's layout, and what ``mmjax.engine.sampler`` reads). Rows of free requests are
all ones, so a batch mixing constrained and free requests is one array of one shape.
"""

from __future__ import annotations

import numpy as np


def mask_words(vocab_size: int) -> int:
    """32-bit words a mask row of ``vocab_size`` tokens takes."""
    return (vocab_size + 31) // 32


def all_allowed(rows: int, vocab_size: int) -> np.ndarray:
    """``[rows, ceil(V / 32)]`` uint32 masks allowing every token."""
    return np.full((rows, mask_words(vocab_size)), 0xFFFFFFFF, np.uint32)
