"""Host bookkeeping of the device's embedding arena: whose placeholder embeddings are in which rows,
and the encoder cache that keeps them for later requests with the same items.

The device runner keeps placeholder embeddings in an arena of ``StepShapes.embedding_rows``
rows per replica, so they never travel back to the host; a step gathers them on the
device by row index. Here, on the host, a request is given arena rows (in blocks, like KV
pages, so the arena never fragments) when its items must be encoded, and gives them back
when its prefill is past its last placeholder, when it is preempted, and when it finishes
or is aborted.

Encoder cache: rows are kept per *entry*, the embeddings of one multimodal item (its key,
``ProcessedPrompt.mm_keys``). A request holds one entry per item; an item whose key has a
filled entry on the request's replica shares that entry's rows and is not encoded, so a
follow-up prompt that adds one image to earlier ones encodes only that image. Entries are
counted by reference; one no request holds stays, filled, until its rows are needed (least
recently used first). The arena has room for ``max_num_seqs`` prompts at the limit besides
the cache's budget, so the rows of every running request can always be found by evicting.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
from collections.abc import Hashable, Sequence

import numpy as np

from mmjax.engine.shapes import EMBEDDING_BLOCK_ROWS, StepShapes
from mmjax.kv_cache import PageAllocator


@dataclasses.dataclass
class _Entry:
    replica: int
    seq: int  # its sequence in the replica's block allocator
    rows: np.ndarray
    key: Hashable | None  # None: never shared
    refs: int = 1
    filled: bool = False


class EmbeddingRows:
    """Arena rows of each data replica, handed out per request and kept per item.

    Attributes:
      rows_per_prompt: the most placeholder rows one prompt may take.
      hits, misses: items whose embeddings were found cached (or being encoded), and those that were not.
    """

    def __init__(self, shapes: StepShapes):
        blocks = shapes.embedding_rows // EMBEDDING_BLOCK_ROWS
        self.rows_per_prompt = shapes.rows_per_prompt if blocks else 0
        self._allocators = [PageAllocator(blocks, EMBEDDING_BLOCK_ROWS) for _ in range(shapes.num_replicas)] \
            if blocks else []
        self._entries_of: dict[Hashable, list[_Entry]] = {}  # request -> the entries it holds, item by item
        self._by_key: dict[tuple[int, Hashable], _Entry] = {}  # (replica, key) -> entry
        self._idle: collections.OrderedDict[int, _Entry] = collections.OrderedDict()  # unheld filled, LRU first
        self._seqs = itertools.count()
        self.hits = self.misses = 0

    def assign(
        self, request_id: Hashable, replica: int, items: Sequence[tuple[Hashable | None, int]]
    ) -> list[tuple[np.ndarray, bool]]:
        """Rows for each item of ``request_id`` on ``replica``: ``(rows, shared)`` per ``(key, num_rows)``.

        ``key``: the item's (None: never shared). Shared rows are a cache hit: the item must not
        be encoded — its rows are filled, or being filled in this step by the item that took them
        first (the same image twice in one prompt shares too). Unshared ones are the request's to
        encode into, then ``filled()`` (a shared entry never filled is dropped when its last holder
        releases it).
        """
        if request_id in self._entries_of:
            raise ValueError(f"request {request_id!r} already holds arena rows")
        held: list[_Entry] = []
        self._entries_of[request_id] = held
        try:
            return [self._claim(held, replica, key, num_rows) for key, num_rows in items]
        except BaseException:  # no room (OutOfPagesError): give back what the earlier items took
            self.release(request_id)
            raise

    def _claim(self, held: list[_Entry], replica: int, key: Hashable | None, num_rows: int) -> tuple[np.ndarray, bool]:
        """One item's rows, appended to ``held``: a filled (or filling) entry's, else new ones."""
        entry = self._by_key.get((replica, key)) if key is not None else None
        if entry is not None and len(entry.rows) >= num_rows:
            if entry.refs == 0:
                del self._idle[id(entry)]
            entry.refs += 1
            held.append(entry)
            self.hits += 1
            return entry.rows[:num_rows], True
        entry = _Entry(replica, *self._take(replica, num_rows), key)
        if key is not None:
            self._by_key[(replica, key)] = entry
        held.append(entry)
        self.misses += 1
        return entry.rows, False

    def filled(self, request_id: Hashable, item: int) -> None:
        """Item ``item`` of ``request_id`` (its index in ``assign``'s list) now has its embeddings in its rows."""
        self._entries_of[request_id][item].filled = True

    def release(self, request_id: Hashable) -> None:
        """Give back ``request_id``'s rows, if it holds any; a filled shared entry stays cached."""
        for entry in self._entries_of.pop(request_id, ()):
            entry.refs -= 1
            if entry.refs == 0:
                if entry.filled and entry.key is not None:
                    self._idle[id(entry)] = entry
                else:
                    self._drop(entry)

    def reset(self) -> None:
        """Forget every entry (the arena was zeroed, or the user asked): idle rows are freed now,
        held ones when their requests release them; no later request shares them."""
        for entry in list(self._idle.values()):
            self._drop(entry)
        self._idle.clear()
        self._by_key.clear()
        for entries in self._entries_of.values():
            for entry in entries:
                entry.filled = False

    def _take(self, replica: int, num_rows: int) -> tuple[int, np.ndarray]:
        """A new block sequence of ``num_rows`` rows on ``replica``, evicting idle entries for room."""
        allocator, seq = self._allocators[replica], next(self._seqs)
        needed = allocator.pages_needed(seq, num_rows)
        while not allocator.can_allocate(needed):
            victim = next((e for e in self._idle.values() if e.replica == replica), None)
            if victim is None:
                break  # allocate raises OutOfPagesError, which cannot happen while rows are released
            del self._idle[id(victim)]
            self._drop(victim)
        return seq, np.asarray(allocator.allocate(seq, num_rows), np.int32)

    def _drop(self, entry: _Entry) -> None:
        if entry.key is not None and self._by_key.get((entry.replica, entry.key)) is entry:
            del self._by_key[(entry.replica, entry.key)]
        self._allocators[entry.replica].free(entry.seq)

    @property
    def num_held(self) -> int:
        """Requests holding rows (0 when every prefill is done)."""
        return len(self._entries_of)

    def stats(self) -> dict[str, int | float]:
        """Hits and misses of the encoder cache (items), its entries and the arena rows they hold."""
        lookups = self.hits + self.misses
        entries = {id(e): e for e in (*self._by_key.values(), *self._idle.values())}
        return {"hits": self.hits, "misses": self.misses, "hit_rate": self.hits / lookups if lookups else 0.0,
                "entries": len(entries), "rows": int(sum(len(e.rows) for e in entries.values()))}
