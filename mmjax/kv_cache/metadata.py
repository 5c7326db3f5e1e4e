"""Attention metadata for one ragged step, and the host function that builds it.

A step's query tokens are packed along one axis ``T``: sequence ``b`` owns tokens
``cu_q_lens[b]:cu_q_lens[b+1]``, which are its *last* ``q_len`` tokens, so query
``i`` sits at absolute position ``kv_lens[b] - q_len + i``. Decode (q_len 1),
prefill and chunked prefill share this one description.

A query token sees the keys ``[0, key_ends[t])`` of its sequence: ``position + 1`` (causal) unless it
belongs to a bidirectional span (the tokens of one image, for a model such as Gemma 3), whose tokens
all see up to the span's end. A layer with a sliding window also starts its keys at ``position - window + 1``
(``mmjax.attention.dispatch.paged_attention``).

Every array is padded to a bucketed shape (tokens, sequences, pages per sequence)
and the one static field, ``max_q_len``, is bucketed too, so a workload compiles a
small, known set of programs. Padding sequences have ``kv_len == q_len == 0`` and
null-page block tables; padding tokens have slot -1 (their K/V write is dropped).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import numpy as np

from mmjax.kv_cache.allocator import NULL_PAGE
from mmjax.kv_cache.pages import PADDING_SLOT
from mmjax.types import ArrayLike, Int


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=["block_tables", "kv_lens", "cu_q_lens", "num_seqs", "slot_mapping", "positions", "key_ends"],
    meta_fields=["max_q_len"],
)
@dataclasses.dataclass(frozen=True)
class AttentionMetadata:
    """Where each sequence's K/V lives and which query tokens belong to it.

    ``B`` sequences, ``W`` pages per sequence, ``T`` packed tokens. The arrays are
    host (numpy) ones as ``build_attention_metadata`` makes them, device ones once
    placed; an engine step stacks a leading replica axis ``R`` onto every field.
    ``key_ends[t]``: one past the last key token ``t`` sees (``position + 1``, or its bidirectional span's
    end; 0 for padding). ``max_q_len`` (static) bounds ``q_len`` of every sequence; the reference path
    sizes its per-sequence query gather with it (1 for a pure decode step).
    """

    block_tables: Int[ArrayLike, "B W"]
    kv_lens: Int[ArrayLike, "B"]
    cu_q_lens: Int[ArrayLike, "B+1"]
    num_seqs: Int[ArrayLike, "1"]
    slot_mapping: Int[ArrayLike, "T"]
    positions: Int[ArrayLike, "T"]
    key_ends: Int[ArrayLike, "T"]
    max_q_len: int

    @property
    def num_tokens(self) -> int:
        return self.slot_mapping.shape[0]


def bucket(n: int, buckets: Sequence[int] | None = None, minimum: int = 1) -> int:
    """Smallest bucket >= n; powers of two (at least `minimum`) when `buckets` is None."""
    if buckets is None:
        return max(minimum, 1 << max(n - 1, 0).bit_length())
    for b in sorted(buckets):
        if b >= n:
            return b
    raise ValueError(f"{n} exceeds the largest bucket {max(buckets)}")


def build_attention_metadata(
    block_tables: Sequence[Sequence[int]],
    kv_lens: Sequence[int],
    q_lens: Sequence[int],
    *,
    page_size: int,
    token_buckets: Sequence[int] | None = None,
    seq_buckets: Sequence[int] | None = None,
    page_buckets: Sequence[int] | None = None,
    bidirectional_spans: Sequence[Sequence[tuple[int, int]]] | None = None,
) -> AttentionMetadata:
    """Host-side (numpy) metadata for sequences with the given pages and lengths.

    ``kv_lens[b]`` counts all tokens of sequence b including this step's
    ``q_lens[b]`` new ones, whose pages must already be in ``block_tables[b]``
    (e.g. from `PageAllocator.allocate` / `append_slots`). ``bidirectional_spans[b]``: sequence b's spans
    ``(start, stop)`` of positions whose tokens see each other (one image's); a span must lie in the
    sequence's first ``kv_lens[b]`` tokens wherever it holds one of this step's tokens.
    """
    num_seqs = len(kv_lens)
    if not len(block_tables) == len(q_lens) == num_seqs:
        raise ValueError(
            f"block_tables, kv_lens, q_lens must have one entry per sequence, got "
            f"{len(block_tables)}, {num_seqs}, {len(q_lens)}")
    for b, (table, kv, q) in enumerate(zip(block_tables, kv_lens, q_lens)):
        if not 0 <= q <= kv:
            raise ValueError(f"sequence {b}: need 0 <= q_len <= kv_len, got q_len={q}, kv_len={kv}")
        if len(table) * page_size < kv:
            raise ValueError(f"sequence {b}: {len(table)} pages of {page_size} cannot hold {kv} tokens")
    total = int(sum(q_lens))
    t_pad = bucket(total, token_buckets)
    b_pad = bucket(num_seqs, seq_buckets)
    p_pad = bucket(max((len(t) for t in block_tables), default=1), page_buckets)

    tables = np.full((b_pad, p_pad), NULL_PAGE, np.int32)
    for b, table in enumerate(block_tables):
        tables[b, : len(table)] = table
    kv = np.zeros(b_pad, np.int32)
    kv[:num_seqs] = kv_lens
    cu = np.zeros(b_pad + 1, np.int32)
    cu[1 : num_seqs + 1] = np.cumsum(q_lens)
    cu[num_seqs + 1 :] = total
    slots = np.full(t_pad, PADDING_SLOT, np.int32)
    positions = np.zeros(t_pad, np.int32)
    key_ends = np.zeros(t_pad, np.int32)
    for b in range(num_seqs):
        pos = np.arange(kv_lens[b] - q_lens[b], kv_lens[b])
        tokens = slice(cu[b], cu[b + 1])
        positions[tokens] = pos
        key_ends[tokens] = _key_ends(pos, kv_lens[b], () if bidirectional_spans is None else bidirectional_spans[b], b)
        slots[tokens] = tables[b, pos // page_size] * page_size + pos % page_size
    return AttentionMetadata(
        block_tables=tables, kv_lens=kv, cu_q_lens=cu,
        num_seqs=np.array([num_seqs], np.int32), slot_mapping=slots, positions=positions, key_ends=key_ends,
        max_q_len=bucket(max(q_lens, default=1)),
    )


def _key_ends(pos: np.ndarray, kv_len: int, spans: Sequence[tuple[int, int]], seq: int) -> np.ndarray:
    """``pos + 1``, raised to its span's end for a token inside a bidirectional span."""
    ends = pos + 1
    for start, stop in spans:
        inside = (pos >= start) & (pos < stop)
        if inside.any() and stop > kv_len:
            raise ValueError(f"sequence {seq}: a bidirectional span [{start}, {stop}) ends past its "
                             f"{kv_len} tokens in the cache; a step must hold a span's tokens up to its end")
        ends = np.where(inside, np.maximum(ends, stop), ends)
    return ends.astype(np.int32)


def as_device(metadata: AttentionMetadata, device: jax.Device | None = None) -> AttentionMetadata:
    """Moves the array fields to `device` (default device when None)."""
    return jax.tree.map(lambda x: jax.device_put(x, device), metadata)

