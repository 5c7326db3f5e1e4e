"""Host-side page allocator: a free list, per-sequence block tables, plain Python.

Page 0 is the null page: it is never handed out, so a zero in a padded block
table (or a padding slot) can never alias a live sequence's data. Every
operation that can fail checks first and mutates second, so a failed call
leaves the allocator exactly as it was; the scheduler reacts to
`OutOfPagesError` (or asks `can_append` first) by preempting, never by crashing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable

NULL_PAGE = 0


class OutOfPagesError(RuntimeError):
    """Not enough free pages; the allocator state is unchanged."""

    def __init__(self, needed: int, free: int):
        self.needed = needed
        self.free = free
        super().__init__(f"out of KV pages: needed {needed} pages, {free} free")


@dataclasses.dataclass
class _Sequence:
    pages: list[int]
    num_tokens: int


class PageAllocator:
    """Hands out pages of `page_size` tokens from a pool of `num_pages` (page 0 reserved)."""

    def __init__(self, num_pages: int, page_size: int):
        if num_pages < 2:
            raise ValueError(f"num_pages must be >= 2 (page 0 is reserved), got {num_pages}")
        if page_size < 1:
            raise ValueError(f"page_size must be >= 1, got {page_size}")
        self.num_pages = num_pages
        self.page_size = page_size
        # Popped from the end: low page ids are used first, freed pages are reused first.
        self._free: list[int] = list(range(num_pages - 1, NULL_PAGE, -1))
        self._seqs: dict[Hashable, _Sequence] = {}

    @property
    def num_free_pages(self) -> int:
        return len(self._free)

    def __contains__(self, seq_id: Hashable) -> bool:
        return seq_id in self._seqs

    def sequences(self) -> list[Hashable]:
        return list(self._seqs)

    def num_tokens(self, seq_id: Hashable) -> int:
        return self._get(seq_id).num_tokens

    def block_table(self, seq_id: Hashable) -> tuple[int, ...]:
        return tuple(self._get(seq_id).pages)

    def pages_needed(self, seq_id: Hashable, num_new_tokens: int) -> int:
        """Pages to add so that `seq_id` (new or existing) holds `num_new_tokens` more tokens."""
        seq = self._seqs.get(seq_id)
        have_pages, have_tokens = (len(seq.pages), seq.num_tokens) if seq else (0, 0)
        total_pages = -(-(have_tokens + num_new_tokens) // self.page_size)
        return max(total_pages - have_pages, 0)

    def can_allocate(self, num_pages: int) -> bool:
        return num_pages <= len(self._free)

    def can_append(self, seq_id: Hashable, num_new_tokens: int = 1) -> bool:
        return self.can_allocate(self.pages_needed(seq_id, num_new_tokens))

    def allocate(self, seq_id: Hashable, num_tokens: int) -> list[int]:
        """Starts a sequence holding `num_tokens` tokens; returns their slots."""
        if seq_id in self._seqs:
            raise ValueError(f"sequence {seq_id!r} is already allocated")
        self._reserve(seq_id, num_tokens)  # raises before any mutation
        self._seqs[seq_id] = _Sequence(pages=[], num_tokens=0)
        return self._append(seq_id, num_tokens)

    def append_slots(self, seq_id: Hashable, num_tokens: int = 1) -> list[int]:
        """Grows an existing sequence by `num_tokens`; returns the new tokens' slots."""
        self._get(seq_id)
        self._reserve(seq_id, num_tokens)
        return self._append(seq_id, num_tokens)

    def free(self, seq_id: Hashable) -> None:
        """Returns all pages of `seq_id` to the free list."""
        seq = self._seqs.pop(self._key(seq_id))
        self._free.extend(reversed(seq.pages))

    def slots(self, seq_id: Hashable, start: int, stop: int) -> list[int]:
        """Flat slot ids (page * page_size + offset) of tokens [start, stop) of `seq_id`."""
        seq = self._get(seq_id)
        if not 0 <= start <= stop <= seq.num_tokens:
            raise ValueError(f"token range [{start}, {stop}) outside [0, {seq.num_tokens})")
        g = self.page_size
        return [seq.pages[i // g] * g + i % g for i in range(start, stop)]

    def _reserve(self, seq_id: Hashable, num_tokens: int) -> None:
        if num_tokens < 0:
            raise ValueError(f"num_tokens must be >= 0, got {num_tokens}")
        needed = self.pages_needed(seq_id, num_tokens)
        if not self.can_allocate(needed):
            raise OutOfPagesError(needed=needed, free=len(self._free))

    def _append(self, seq_id: Hashable, num_tokens: int) -> list[int]:
        seq = self._seqs[seq_id]
        for _ in range(self.pages_needed(seq_id, num_tokens)):
            seq.pages.append(self._free.pop())
        start = seq.num_tokens
        seq.num_tokens += num_tokens
        return self.slots(seq_id, start, seq.num_tokens)

    def _key(self, seq_id: Hashable) -> Hashable:
        if seq_id not in self._seqs:
            raise KeyError(f"unknown sequence {seq_id!r}")
        return seq_id

    def _get(self, seq_id: Hashable) -> _Sequence:
        return self._seqs[self._key(seq_id)]
