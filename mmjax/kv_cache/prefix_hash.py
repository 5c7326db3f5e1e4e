"""Hashes of full KV pages for prefix caching: what a page's K/V depend on, and nothing else.

A page's K/V are a function of every token up to its end: the previous pages (through
their hash, a chain), its own token ids, and for placeholder tokens the item each one
shows and where in that item it lies. So page ``i``'s hash covers
``(hash of page i-1, token ids of page i, (item key, offset in the item, position in the
page) of every item run inside it)``: two prompts with the same text and different images
get different hashes from the first page holding an image token on, and the same image
and text give the same hashes in any process. BLAKE3-256 (collisions are treated as
impossible at 256 bits), over length-prefixed fields.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import NamedTuple

import blake3
import numpy as np


class ItemSpan(NamedTuple):
    """One multimodal item's placeholder tokens ``[offset, offset + length)`` and the item's key."""

    offset: int
    length: int
    key: str


def salt_root(cache_salt: str | None) -> bytes | None:
    """The parent hash of a salted sequence's first page (None without a salt): sequences with
    different salts share no page hash, so none finds another's cached pages."""
    if cache_salt is None:
        return None
    hasher = blake3.blake3()
    _field(hasher, b"mmjax-cache-salt-v1")
    _field(hasher, cache_salt.encode("utf-8", "surrogatepass"))
    return hasher.digest()


def hash_pages(parent: bytes | None, token_ids: np.ndarray, first_token: int, page_size: int,
               spans: Sequence[ItemSpan] = ()) -> list[bytes]:
    """The hashes of consecutive full pages.

    Args:
      parent: the hash of the page before the first (None for a sequence's first page).
      token_ids: i32 ``[P * G]``, the tokens of the ``P`` pages.
      first_token: the position of ``token_ids[0]`` in the sequence (a multiple of ``G``).
      page_size: ``G``.
      spans: the sequence's item runs (any order; those outside the pages are ignored).
    """
    token_ids = np.ascontiguousarray(token_ids, dtype=np.int32)
    if len(token_ids) % page_size or first_token % page_size:
        raise ValueError(f"full pages only: {len(token_ids)} tokens from {first_token}, page size {page_size}")
    hashes, spans = [], sorted(spans)
    for index in range(len(token_ids) // page_size):
        start = first_token + index * page_size
        hasher = blake3.blake3()
        _field(hasher, parent or b"")
        _field(hasher, token_ids[index * page_size:(index + 1) * page_size].tobytes())
        for span in spans:
            lo, hi = max(span.offset, start), min(span.offset + span.length, start + page_size)
            if lo < hi:
                _field(hasher, span.key.encode())
                _field(hasher, struct.pack("<QQQ", lo - span.offset, lo - start, hi - lo))
        parent = hasher.digest()
        hashes.append(parent)
    return hashes


def _field(hasher: blake3.blake3, data: bytes) -> None:
    hasher.update(struct.pack("<Q", len(data)))
    hasher.update(data)
