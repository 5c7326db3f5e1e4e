"""``ProcessorCache``: mapper outputs (and items given with an id) kept by content, LRU in bytes.

Mappers are pure functions of (item content, the ``mm_processor_kwargs`` in effect, the
model), so their outputs can be kept under a key made of exactly those and handed back
to any later prompt with the same items. The cache also keeps the raw items that came
with a user id (``multi_modal_uuids``), so a later prompt may send the id alone.

It is shared by the threads that map prompts (``mmjax.engine.prompt_mapper``): every
method takes one lock. Entries larger than the whole budget are not kept.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Hashable
from typing import Any

import numpy as np
from PIL import Image

#: vLLM's ``mm_processor_cache_gb`` is 4; mmjax defaults lower because one process holds it
#: beside every prompt a data-set-sized ``generate`` reads ahead (measured in ``benchmarks/large_batch.py``).
DEFAULT_PROCESSOR_CACHE_GB = 1.0


def nbytes_of(value: Any) -> int:
    """Host bytes of a cached value: arrays, PIL images, audio clips and mappings/lists of them."""
    if isinstance(value, Image.Image):
        return value.width * value.height * len(value.getbands())
    if isinstance(value, np.ndarray) or hasattr(value, "nbytes"):
        return int(value.nbytes)
    if isinstance(value, dict) or hasattr(value, "values") and hasattr(value, "keys"):
        return sum(nbytes_of(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(nbytes_of(v) for v in value)
    return 0


class ProcessorCache:
    """A thread-safe LRU of ``key -> value`` bounded by ``capacity_bytes`` (0: keeps nothing).

    ``stats()``: hits, misses, entries, bytes held, capacity.
    """

    def __init__(self, capacity_bytes: int):
        if isinstance(capacity_bytes, bool) or not isinstance(capacity_bytes, int) or capacity_bytes < 0:
            raise ValueError(f"the processor cache size must be an int of bytes >= 0, got {capacity_bytes!r}")
        self.capacity_bytes = capacity_bytes
        self._entries: collections.OrderedDict[Hashable, tuple[Any, int]] = collections.OrderedDict()
        self._bytes = 0
        self._hits = 0
        self._misses = 0
        self._lock = threading.Lock()

    @classmethod
    def from_gb(cls, gigabytes: float) -> ProcessorCache:
        if isinstance(gigabytes, bool) or not isinstance(gigabytes, (int, float)) or not gigabytes >= 0:
            raise ValueError(f"mm_processor_cache_gb must be a number >= 0 (0 disables the cache), got {gigabytes!r}")
        return cls(int(gigabytes * 2**30))

    @property
    def enabled(self) -> bool:
        return self.capacity_bytes > 0

    def get(self, key: Hashable) -> Any | None:
        """The value under ``key`` (now the most recently used), or None."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self._misses += 1
                return None
            self._entries.move_to_end(key)
            self._hits += 1
            return entry[0]

    def put(self, key: Hashable, value: Any) -> None:
        """Keep ``value`` under ``key``, evicting the least recently used entries to stay in budget."""
        size = nbytes_of(value)
        with self._lock:
            if key in self._entries:
                self._bytes -= self._entries.pop(key)[1]
            if size > self.capacity_bytes:
                return
            while self._bytes + size > self.capacity_bytes:
                self._bytes -= self._entries.popitem(last=False)[1][1]
            self._entries[key] = (value, size)
            self._bytes += size

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    def stats(self) -> dict[str, int | float]:
        with self._lock:
            lookups = self._hits + self._misses
            return {"hits": self._hits, "misses": self._misses, "hit_rate": self._hits / lookups if lookups else 0.0,
                    "entries": len(self._entries), "bytes": self._bytes, "capacity_bytes": self.capacity_bytes}
