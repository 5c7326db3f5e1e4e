"""Runs of one token id in a prompt: Gemma 3's image soft tokens, each run attending to itself both ways."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def token_runs(token_ids: Sequence[int] | np.ndarray, token_id: int) -> tuple[tuple[int, int], ...]:
    """``(start, stop)`` of each maximal run of ``token_id`` in ``token_ids``, in order (transformers'
    ``token_type_ids == 1`` groups, when ``token_id`` is the image soft token)."""
    marked = np.asarray(token_ids, dtype=np.int64).reshape(-1) == token_id
    edges = np.diff(np.concatenate([[0], marked.astype(np.int8), [0]]))
    return tuple((int(a), int(b)) for a, b in zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)))
