"""Prefix caching in the page allocator, and the page hashes it is keyed by.

The allocator is checked against a plain model of what it must keep: which pages each
sequence holds, how many sequences hold each page, and that cached pages are reused for
new data only after the free list is empty, least recently freed first. The hashes are
checked against BLAKE3 computed here from the documented fields.
"""

from __future__ import annotations

import random
import struct

import blake3
import numpy as np
import pytest

from mmjax.kv_cache import NULL_PAGE, OutOfPagesError, PageAllocator
from mmjax.kv_cache.prefix_hash import ItemSpan, hash_pages

G = 4


def _hashes(n: int, salt: str = "") -> list[bytes]:
    return [f"{salt}page{i}".encode().ljust(32, b".") for i in range(n)]


def test_a_second_sequence_shares_the_registered_pages():
    alloc = PageAllocator(num_pages=10, page_size=G, enable_caching=True)
    alloc.allocate("a", 10)  # pages for tokens 0..9: two full pages and a partial one
    alloc.register("a", _hashes(2))
    pages_a = alloc.block_table("a")
    found = alloc.cached_prefix(_hashes(3))
    assert found == list(pages_a[:2])  # the third hash names nothing
    alloc.allocate("b", 9, found)
    table_b = alloc.block_table("b")
    assert table_b[:2] == pages_a[:2] and table_b[2] not in pages_a  # shared prefix, own tail
    assert alloc.num_tokens("b") == 9
    alloc.free("a")
    assert alloc.cached_prefix(_hashes(2)) == list(pages_a[:2])  # still held by b
    alloc.free("b")
    assert alloc.num_free_pages == 9  # every page can be taken again: free or cached-and-unheld
    assert alloc.cached_prefix(_hashes(2)) == list(pages_a[:2])  # and the cached ones are still found


def test_cached_pages_are_reused_only_when_the_free_list_is_empty_least_recently_freed_first():
    alloc = PageAllocator(num_pages=6, page_size=G, enable_caching=True)  # pages 1..5
    alloc.allocate("a", 8)
    alloc.register("a", _hashes(2, "a"))
    alloc.allocate("b", 4)
    alloc.register("b", _hashes(1, "b"))
    a_pages, b_pages = alloc.block_table("a"), alloc.block_table("b")
    alloc.free("a")  # a's tail page is the first to go, then its head
    alloc.free("b")
    alloc.allocate("c", 8)  # the two never-used pages
    assert set(alloc.block_table("c")).isdisjoint(a_pages + b_pages)
    assert alloc.cached_prefix(_hashes(2, "a")) == list(a_pages)
    alloc.append_slots("c", 1)  # no free page left: a's tail is evicted
    assert alloc.block_table("c")[-1] == a_pages[1]
    assert alloc.cached_prefix(_hashes(2, "a")) == [a_pages[0]]  # the chain now ends after its head
    assert alloc.cached_prefix(_hashes(1, "b")) == list(b_pages)


def test_taking_an_unheld_cached_page_counts_against_the_free_pages():
    alloc = PageAllocator(num_pages=4, page_size=G, enable_caching=True)  # pages 1..3
    alloc.allocate("a", 8)
    alloc.register("a", _hashes(2))
    alloc.free("a")
    cached = alloc.cached_prefix(_hashes(2))
    assert alloc.num_free_pages == 3
    # Reusing both cached pages leaves one page: 12 tokens fit, 13 do not.
    assert alloc.can_allocate(1, cached) and not alloc.can_allocate(2, cached)
    with pytest.raises(OutOfPagesError):
        alloc.allocate("b", 13, cached)
    assert alloc.cached_prefix(_hashes(2)) == cached and "b" not in alloc  # unchanged by the failure
    alloc.allocate("b", 12, cached)
    assert alloc.num_free_pages == 0


def test_the_same_content_twice_keeps_the_first_copy_and_a_reset_forgets_everything():
    alloc = PageAllocator(num_pages=8, page_size=G, enable_caching=True)
    alloc.allocate("a", 4)
    alloc.allocate("b", 4)  # computed the same page at the same time
    alloc.register("a", _hashes(1))
    alloc.register("b", _hashes(1))
    assert alloc.cached_prefix(_hashes(1)) == list(alloc.block_table("a")) and alloc.num_cached_pages == 1
    b_page = alloc.block_table("b")[0]
    alloc.free("b")
    assert b_page in alloc.free_page_ids()  # the duplicate was never registered: it is simply free
    alloc.reset_cache()
    assert alloc.cached_prefix(_hashes(1)) == [] and alloc.num_cached_pages == 0
    alloc.free("a")
    assert alloc.num_free_pages == 7 and len(alloc.free_page_ids()) == 7


def test_without_caching_nothing_is_found_and_misuse_is_refused():
    alloc = PageAllocator(num_pages=8, page_size=G)
    alloc.allocate("a", 8)
    alloc.register("a", _hashes(2))  # accepted, kept nowhere
    assert alloc.cached_prefix(_hashes(2)) == []
    with pytest.raises(ValueError, match="3 page hashes for a sequence of 2 pages"):
        alloc.register("a", _hashes(3))
    cached = PageAllocator(num_pages=8, page_size=G, enable_caching=True)
    cached.allocate("a", 8)
    cached.register("a", _hashes(2))
    with pytest.raises(ValueError, match="fewer than the 8"):
        cached.allocate("b", 7, cached.cached_prefix(_hashes(2)))
    with pytest.raises(ValueError, match="registered pages"):
        cached.allocate("c", 8, [7])


def test_random_operations_keep_every_page_accounted_for():
    rng = random.Random(3)
    alloc = PageAllocator(num_pages=12, page_size=G, enable_caching=True)
    holders: dict[str, list[int]] = {}
    contents = [_hashes(4, f"doc{d}") for d in range(4)]
    for step in range(400):
        name = f"s{step}"
        if holders and rng.random() < 0.45:
            victim = rng.choice(sorted(holders))
            alloc.free(victim)
            del holders[victim]
        else:
            doc = rng.randrange(4)
            cached = alloc.cached_prefix(contents[doc][:rng.randint(0, 4)])
            tokens = len(cached) * G + rng.randint(1, 9)
            if not alloc.can_allocate(-(-tokens // G) - len(cached), cached):
                with pytest.raises(OutOfPagesError):
                    alloc.allocate(name, tokens, cached)
                continue
            alloc.allocate(name, tokens, cached)
            full = alloc.num_tokens(name) // G
            alloc.register(name, contents[doc][:min(full, 4)])
            holders[name] = list(alloc.block_table(name))
        refs = {}
        for pages in holders.values():
            for page in pages:
                refs[page] = refs.get(page, 0) + 1
        assert NULL_PAGE not in refs
        assert all(alloc._refs[p] == n for p, n in refs.items())
        unheld = set(range(1, 12)) - set(refs)
        assert alloc.free_page_ids() | set(alloc._evictable) == unheld  # every page held, free or cached
        assert not alloc.free_page_ids() & set(alloc._evictable)
        assert alloc.num_free_pages == len(unheld)
        for page_hash, page in alloc._page_of.items():  # a found page is never shared with other content
            assert alloc._hash_of[page] == page_hash


def _field(data: bytes) -> bytes:
    return struct.pack("<Q", len(data)) + data


def test_page_hashes_follow_the_documented_fields():
    tokens = np.arange(100, 108, dtype=np.int32)
    first, second = hash_pages(None, tokens, 0, G)
    assert first == blake3.blake3(_field(b"") + _field(tokens[:4].tobytes())).digest()
    assert second == blake3.blake3(_field(first) + _field(tokens[4:].tobytes())).digest()
    span = ItemSpan(offset=6, length=5, key="k")  # tokens 6..10: the end of page 1, the start of page 2
    with_item = hash_pages(None, np.arange(12, dtype=np.int32), 0, G, [span])
    p0 = blake3.blake3(_field(b"") + _field(np.arange(4, dtype=np.int32).tobytes())).digest()
    p1 = blake3.blake3(_field(p0) + _field(np.arange(4, 8, dtype=np.int32).tobytes())
                       + _field(b"k") + _field(struct.pack("<QQQ", 0, 2, 2))).digest()
    p2 = blake3.blake3(_field(p1) + _field(np.arange(8, 12, dtype=np.int32).tobytes())
                       + _field(b"k") + _field(struct.pack("<QQQ", 2, 0, 3))).digest()
    assert with_item == [p0, p1, p2]
    assert hash_pages(p0, np.arange(4, 12, dtype=np.int32), 4, G, [span]) == [p1, p2]  # a chain, continued


def test_same_text_different_items_differ_from_the_first_page_holding_the_item():
    tokens = np.array([1, 2, 3, 4] + [9] * 8 + [5, 6, 7, 8], np.int32)  # 8 placeholders at 4..11
    a = hash_pages(None, tokens, 0, G, [ItemSpan(4, 8, "image-a")])
    b = hash_pages(None, tokens, 0, G, [ItemSpan(4, 8, "image-b")])
    again = hash_pages(None, tokens, 0, G, [ItemSpan(4, 8, "image-a")])
    assert a[0] == b[0]  # the text before the image is shared
    assert all(x != y for x, y in zip(a[1:], b[1:]))  # never a page after it
    assert a == again
    with pytest.raises(ValueError, match="full pages only"):
        hash_pages(None, tokens[:6], 0, G)
