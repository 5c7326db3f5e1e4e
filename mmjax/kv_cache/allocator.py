"""Host-side page allocator: a free list, per-sequence block tables, prefix caching. Plain Python.

Page 0 is the null page: it is never handed out, so a zero in a padded block
table (or a padding slot) can never alias a live sequence's data. Every
operation that can fail checks first and mutates second, so a failed call
leaves the allocator exactly as it was; the scheduler reacts to
`OutOfPagesError` (or asks `can_append` first) by preempting, never by crashing.

Prefix caching (``enable_caching=True``): a full page whose K/V are computed can be
*registered* under a hash of everything its K/V depend on (``prefix_hash.hash_pages``:
the previous page's hash, its tokens, its placeholders' items). A new sequence may start
with the longest chain of registered pages its own hashes find (``cached_prefix``); the
pages are shared, counted by reference, and never written again (only full pages are
registered, and a sequence only writes past its last full one). A registered page that
no sequence holds stays cached, and is reused for new data least recently freed first,
only once the free list is empty: cached pages cost nothing until the pages run out.

Contiguous sequences: a sequence started with ``expected_tokens`` (its prompt plus the
tokens it may generate) gets a *reservation*: a run of consecutive pages it takes its
new pages from, in order, as it grows. Pages never handed out yet are taken in order
from a frontier, so a reservation is one run; once they are spent, a reservation comes
from the recycled pages in ascending order (consecutive where they are). Other sequences
take reserved pages only when nothing else is free (from the far end of a reservation),
so reserving never makes an allocation fail. Why: attention on a CPU copies each
sequence's pages out of the cache every step, and consecutive pages are read as one
stream. Measured on the 2-core host, a decode step's attention over eight 630-token
sequences (one layer, a 1,024-page cache) took 1.9 ms with each sequence's pages
consecutive, 3.5 ms with pages interleaved as lockstep growth from a free list leaves
them, 3.7 ms with pages in random order. Kernels on GPU/TPU read pages by DMA and do
not care; the reservation costs them nothing.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Hashable, Iterable, Sequence

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
    num_registered: int = 0  # its first pages that were registered (or found) in the prefix cache


class PageAllocator:
    """Hands out pages of `page_size` tokens from a pool of `num_pages` (page 0 reserved).

    ``enable_caching``: keep full pages by hash for later sequences (see the module docstring).
    """

    def __init__(self, num_pages: int, page_size: int, *, enable_caching: bool = False):
        if num_pages < 2:
            raise ValueError(f"num_pages must be >= 2 (page 0 is reserved), got {num_pages}")
        if page_size < 1:
            raise ValueError(f"page_size must be >= 1, got {page_size}")
        self.num_pages = num_pages
        self.page_size = page_size
        self.enable_caching = enable_caching
        # Pages [frontier, num_pages) were never handed out: taken in order, reservations carved from them.
        self._frontier = NULL_PAGE + 1
        self._free: list[int] = []  # recycled free pages; popped from the end: freed pages are reused first
        self._free_descending = True  # _free is sorted high to low (reservations pop ascending runs from it)
        self._reserved: dict[Hashable, collections.deque[int]] = {}  # a sequence's next pages, in order
        self._num_reserved = 0
        self._seqs: dict[Hashable, _Sequence] = {}
        self._refs = [0] * num_pages
        self._hash_of: dict[int, bytes] = {}  # registered page -> its hash
        self._page_of: dict[bytes, int] = {}  # hash -> registered page
        self._evictable: collections.OrderedDict[int, None] = collections.OrderedDict()  # cached, unheld; LRU first

    @property
    def num_free_pages(self) -> int:
        """Pages a new sequence can take: free ones (reserved or not) and cached ones no sequence holds."""
        return len(self._free) + self._num_fresh + self._num_reserved + len(self._evictable)

    @property
    def _num_fresh(self) -> int:
        return self.num_pages - self._frontier

    def free_page_ids(self) -> set[int]:
        """Pages holding nothing: never used, freed, or reserved but not yet taken (not the cached ones)."""
        reserved = {p for pages in self._reserved.values() for p in pages}
        return set(self._free) | set(range(self._frontier, self.num_pages)) | reserved

    def reserved_pages(self, seq_id: Hashable) -> tuple[int, ...]:
        """The pages ``seq_id`` will take next as it grows, in order (empty: it has no reservation)."""
        return tuple(self._reserved.get(seq_id, ()))

    @property
    def num_cached_pages(self) -> int:
        """Registered pages (held by a sequence or not)."""
        return len(self._page_of)

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

    def can_allocate(self, num_pages: int, cached_pages: Sequence[int] = ()) -> bool:
        """Whether ``num_pages`` new pages can be taken after ``cached_pages`` (shared) are."""
        return num_pages <= self.num_free_pages - sum(1 for p in cached_pages if p in self._evictable)

    def can_append(self, seq_id: Hashable, num_new_tokens: int = 1) -> bool:
        return self.can_allocate(self.pages_needed(seq_id, num_new_tokens))

    # -- prefix caching ------------------------------------------------------------------

    def cached_prefix(self, page_hashes: Sequence[bytes]) -> list[int]:
        """The registered pages of the longest prefix of ``page_hashes`` found, in order."""
        pages = []
        if self.enable_caching:
            for page_hash in page_hashes:
                page = self._page_of.get(page_hash)
                if page is None:
                    break
                pages.append(page)
        return pages

    def num_registered(self, seq_id: Hashable) -> int:
        """How many of ``seq_id``'s first pages were registered (or found) in the prefix cache."""
        return self._get(seq_id).num_registered

    def register(self, seq_id: Hashable, page_hashes: Sequence[bytes]) -> None:
        """Register ``seq_id``'s first ``len(page_hashes)`` pages (full, K/V computed) under these hashes.

        Pages registered before are skipped; a hash that another page already holds leaves
        this page unregistered (the same content twice: the first copy is the one found).
        """
        seq = self._get(seq_id)
        if len(page_hashes) > len(seq.pages):
            raise ValueError(f"{len(page_hashes)} page hashes for a sequence of {len(seq.pages)} pages")
        if not self.enable_caching:
            return
        for index in range(seq.num_registered, len(page_hashes)):
            page, page_hash = seq.pages[index], page_hashes[index]
            if page_hash not in self._page_of and page not in self._hash_of:
                self._page_of[page_hash] = page
                self._hash_of[page] = page_hash
        seq.num_registered = max(seq.num_registered, len(page_hashes))

    def reset_cache(self) -> None:
        """Forget every registered page (their K/V are gone); pages held by sequences stay held."""
        self._recycle(reversed(self._evictable))
        self._evictable.clear()
        self._page_of.clear()
        self._hash_of.clear()
        for seq in self._seqs.values():
            seq.num_registered = 0

    # -- sequences -----------------------------------------------------------------------

    def allocate(self, seq_id: Hashable, num_tokens: int, cached_pages: Sequence[int] = (), *,
                 expected_tokens: int | None = None) -> list[int]:
        """Starts a sequence holding `num_tokens` tokens; returns the slots of those past ``cached_pages``.

        ``cached_pages``: from ``cached_prefix``; the sequence's first ``len(cached_pages)`` full
        pages, shared, whose tokens are already computed.
        ``expected_tokens``: the length the sequence may grow to; its pages are then reserved
        as one run where free pages allow (see the module docstring). Never makes it fail.
        """
        if seq_id in self._seqs:
            raise ValueError(f"sequence {seq_id!r} is already allocated")
        if num_tokens < 0:
            raise ValueError(f"num_tokens must be >= 0, got {num_tokens}")
        cached_tokens = len(cached_pages) * self.page_size
        if num_tokens < cached_tokens:
            raise ValueError(f"{num_tokens} tokens are fewer than the {cached_tokens} of the cached pages")
        if any(self._hash_of.get(p) is None for p in cached_pages):
            raise ValueError("cached_pages must be registered pages (from cached_prefix)")
        needed = -(-num_tokens // self.page_size) - len(cached_pages)
        if not self.can_allocate(needed, cached_pages):
            raise OutOfPagesError(needed=needed, free=self.num_free_pages)
        for page in cached_pages:
            self._hold(page)
        self._seqs[seq_id] = _Sequence(pages=list(cached_pages), num_tokens=cached_tokens,
                                       num_registered=len(cached_pages))
        if expected_tokens is not None:
            self._reserve_run(seq_id, -(-max(expected_tokens, num_tokens) // self.page_size) - len(cached_pages))
        return self._append(seq_id, num_tokens - cached_tokens)

    def append_slots(self, seq_id: Hashable, num_tokens: int = 1) -> list[int]:
        """Grows an existing sequence by `num_tokens`; returns the new tokens' slots."""
        self._get(seq_id)
        self._reserve(seq_id, num_tokens)
        return self._append(seq_id, num_tokens)

    def free(self, seq_id: Hashable) -> None:
        """Releases all pages of `seq_id`: registered ones stay cached, the others go to the free list."""
        seq = self._seqs.pop(self._key(seq_id))
        self._release_reservation(seq_id)
        for page in reversed(seq.pages):  # the tail first: it is evicted first
            self._refs[page] -= 1
            if self._refs[page] == 0:
                if page in self._hash_of:
                    self._evictable[page] = None
                else:
                    self._recycle((page,))

    def slots(self, seq_id: Hashable, start: int, stop: int) -> list[int]:
        """Flat slot ids (page * page_size + offset) of tokens [start, stop) of `seq_id`."""
        seq = self._get(seq_id)
        if not 0 <= start <= stop <= seq.num_tokens:
            raise ValueError(f"token range [{start}, {stop}) outside [0, {seq.num_tokens})")
        g = self.page_size
        return [seq.pages[i // g] * g + i % g for i in range(start, stop)]

    def _hold(self, page: int) -> None:
        if self._refs[page] == 0:
            self._evictable.pop(page, None)
        self._refs[page] += 1

    def _take_page(self, seq_id: Hashable) -> int:
        """A page for new data of ``seq_id``: the next of its reservation, else a recycled one, else a
        never used one, else one reserved by another sequence (from the far end of the longest
        reservation), else the least recently freed cached one (now forgotten)."""
        own = self._reserved.get(seq_id)
        if own:
            page = own.popleft()
            self._num_reserved -= 1
        elif self._free:
            page = self._free.pop()
        elif self._num_fresh:
            page = self._frontier
            self._frontier += 1
        elif self._num_reserved:
            page = max(self._reserved.values(), key=len).pop()
            self._num_reserved -= 1
        else:
            page, _ = self._evictable.popitem(last=False)
            del self._page_of[self._hash_of.pop(page)]
        self._refs[page] = 1
        return page

    def _reserve_run(self, seq_id: Hashable, num_pages: int) -> None:
        """Reserve up to ``num_pages`` consecutive free pages for ``seq_id`` (fewer where fewer are free
        without touching other reservations or cached pages): never used ones if enough are left, else
        the recycled ones in ascending order."""
        if num_pages <= 0:
            return
        if self._num_fresh >= num_pages:
            run = range(self._frontier, self._frontier + num_pages)
            self._frontier += num_pages
        else:
            self._recycle(range(self._frontier, self.num_pages))
            self._frontier = self.num_pages
            if not self._free_descending:  # sorted once after the free list changed, not every admission
                self._free.sort(reverse=True)
                self._free_descending = True
            run = [self._free.pop() for _ in range(min(num_pages, len(self._free)))]
        if run:
            self._reserved[seq_id] = collections.deque(run)
            self._num_reserved += len(run)

    def _release_reservation(self, seq_id: Hashable) -> None:
        """Give back the pages ``seq_id`` reserved and did not take; the run's tail goes back to the frontier."""
        pages = self._reserved.pop(seq_id, None)
        if not pages:
            return
        self._num_reserved -= len(pages)
        while pages and pages[-1] == self._frontier - 1:
            self._frontier = pages.pop()
        self._recycle(reversed(pages))

    def _recycle(self, pages: Iterable[int]) -> None:
        """Put pages holding nothing on the free list."""
        size = len(self._free)
        self._free.extend(pages)
        if len(self._free) > size:
            self._free_descending = False

    def _reserve(self, seq_id: Hashable, num_tokens: int) -> None:
        if num_tokens < 0:
            raise ValueError(f"num_tokens must be >= 0, got {num_tokens}")
        needed = self.pages_needed(seq_id, num_tokens)
        if not self.can_allocate(needed):
            raise OutOfPagesError(needed=needed, free=self.num_free_pages)

    def _append(self, seq_id: Hashable, num_tokens: int) -> list[int]:
        seq = self._seqs[seq_id]
        for _ in range(self.pages_needed(seq_id, num_tokens)):
            seq.pages.append(self._take_page(seq_id))
        start = seq.num_tokens
        seq.num_tokens += num_tokens
        return self.slots(seq_id, start, seq.num_tokens)

    def _key(self, seq_id: Hashable) -> Hashable:
        if seq_id not in self._seqs:
            raise KeyError(f"unknown sequence {seq_id!r}")
        return seq_id

    def _get(self, seq_id: Hashable) -> _Sequence:
        return self._seqs[self._key(seq_id)]
