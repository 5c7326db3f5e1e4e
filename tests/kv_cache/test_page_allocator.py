"""Page allocator: ownership invariants, exhaustion reported with state unchanged."""

from __future__ import annotations

import copy
import random

import pytest

from mmjax.kv_cache import NULL_PAGE, OutOfPagesError, PageAllocator


def _snapshot(alloc: PageAllocator):
    return (alloc.num_free_pages, {s: (alloc.block_table(s), alloc.num_tokens(s), alloc.reserved_pages(s))
                                   for s in alloc.sequences()}, alloc.free_page_ids(), copy.copy(alloc._free))


def _check_invariants(alloc: PageAllocator) -> None:
    owned = [p for s in alloc.sequences() for p in alloc.block_table(s)]
    assert len(owned) == len(set(owned)), "a page is owned twice"
    assert NULL_PAGE not in owned, "the null page was handed out"
    free = alloc.free_page_ids()
    assert set(owned).isdisjoint(free), "a page is both owned and free"
    assert NULL_PAGE not in free
    assert len(owned) + alloc.num_free_pages == alloc.num_pages - 1 == len(owned) + len(free)
    reserved = [p for s in alloc.sequences() for p in alloc.reserved_pages(s)]
    assert len(reserved) == len(set(reserved)) and set(reserved) <= free, "a reserved page is owned or reserved twice"
    for s in alloc.sequences():
        assert len(alloc.block_table(s)) == -(-alloc.num_tokens(s) // alloc.page_size)


def test_allocate_append_free_and_slots():
    alloc = PageAllocator(num_pages=6, page_size=4)
    slots = alloc.allocate("a", 6)
    table = alloc.block_table("a")
    assert len(table) == 2 and NULL_PAGE not in table
    assert slots == [table[i // 4] * 4 + i % 4 for i in range(6)]
    assert alloc.append_slots("a") == [table[1] * 4 + 2]
    assert alloc.append_slots("a", 3)[-1] == alloc.block_table("a")[2] * 4 + 1  # token 9
    assert alloc.num_tokens("a") == 10 and alloc.num_free_pages == 2
    alloc.free("a")
    assert alloc.num_free_pages == 5 and "a" not in alloc
    assert alloc.allocate("b", 0) == [] and alloc.block_table("b") == ()


def test_exhaustion_is_reported_and_leaves_state_unchanged():
    alloc = PageAllocator(num_pages=4, page_size=2)
    alloc.allocate(1, 3)
    before = _snapshot(alloc)
    assert alloc.pages_needed(2, 3) == 2 and not alloc.can_append(2, 3)
    with pytest.raises(OutOfPagesError, match="needed 2 pages, 1 free") as err:
        alloc.allocate(2, 3)
    assert (err.value.needed, err.value.free) == (2, 1)
    assert _snapshot(alloc) == before and 2 not in alloc
    with pytest.raises(OutOfPagesError):
        alloc.append_slots(1, 4)
    assert _snapshot(alloc) == before
    assert alloc.can_append(1, 3) and len(alloc.append_slots(1, 3)) == 3  # fills the last page exactly


def test_misuse_errors():
    alloc = PageAllocator(num_pages=3, page_size=2)
    alloc.allocate("a", 1)
    with pytest.raises(ValueError, match="already allocated"):
        alloc.allocate("a", 1)
    with pytest.raises(KeyError, match="unknown sequence"):
        alloc.append_slots("b")
    with pytest.raises(KeyError):
        alloc.free("b")
    with pytest.raises(ValueError, match="num_tokens must be >= 0"):
        alloc.append_slots("a", -1)
    with pytest.raises(ValueError, match="page 0 is reserved"):
        PageAllocator(num_pages=1, page_size=2)


def test_random_operation_sequence_keeps_invariants():
    rng = random.Random(0)
    alloc = PageAllocator(num_pages=17, page_size=3)
    next_id, failures = 0, 0
    for _ in range(600):
        live = alloc.sequences()
        op = rng.random()
        try:
            if op < 0.3 or not live:
                before = _snapshot(alloc)
                try:
                    n = rng.randint(0, 12)
                    expected = rng.choice([None, n, n + rng.randint(0, 20)])  # reservations, some stolen from
                    alloc.allocate(next_id, n, expected_tokens=expected)
                    next_id += 1
                except OutOfPagesError:
                    failures += 1
                    assert _snapshot(alloc) == before
            elif op < 0.8:
                seq, before = rng.choice(live), _snapshot(alloc)
                n = rng.randint(1, 7)
                can = alloc.can_append(seq, n)
                try:
                    new = alloc.append_slots(seq, n)
                    assert can and len(new) == n and all(s // 3 != NULL_PAGE for s in new)
                except OutOfPagesError:
                    failures += 1
                    assert not can and _snapshot(alloc) == before
            else:
                alloc.free(rng.choice(live))
        finally:
            _check_invariants(alloc)
    assert failures > 0, "the sequence never exercised exhaustion"
    for seq in alloc.sequences():
        alloc.free(seq)
    assert alloc.num_free_pages == alloc.num_pages - 1


def lockstep(alloc: PageAllocator, prompt: int, steps: int, expected: int | None) -> list[tuple[int, ...]]:
    """Four sequences admitted together, then grown one token each per step (a decode batch)."""
    for seq in range(4):
        alloc.allocate(seq, prompt, expected_tokens=expected)
    for _ in range(steps):
        for seq in range(4):
            alloc.append_slots(seq)
    return [alloc.block_table(seq) for seq in range(4)]


def is_one_run(table: tuple[int, ...]) -> bool:
    return all(b == a + 1 for a, b in zip(table, table[1:]))


def test_sequences_with_an_expected_length_grow_in_consecutive_pages():
    grown = lockstep(PageAllocator(num_pages=64, page_size=4), prompt=10, steps=20, expected=30)
    assert all(len(t) == 8 and is_one_run(t) for t in grown)
    # Without one, lockstep growth interleaves the sequences' pages (what the reservation is for).
    interleaved = lockstep(PageAllocator(num_pages=64, page_size=4), prompt=10, steps=20, expected=None)
    assert not any(is_one_run(t) for t in interleaved)


def test_a_reservation_never_makes_another_allocation_fail_and_is_given_back():
    alloc = PageAllocator(num_pages=11, page_size=2)  # 10 usable pages
    alloc.allocate("long", 2, expected_tokens=20)  # reserves all 10 pages, holds 1
    assert alloc.num_free_pages == 9 and len(alloc.reserved_pages("long")) == 9
    alloc.allocate("other", 12)  # 6 pages: taken from the far end of the reservation
    assert alloc.block_table("other") == (10, 9, 8, 7, 6, 5)
    assert alloc.reserved_pages("long") == (2, 3, 4)  # its next pages are still its own, in order
    assert alloc.append_slots("long", 3) and alloc.block_table("long") == (1, 2, 3)
    alloc.free("long")
    alloc.free("other")
    assert alloc.num_free_pages == 10 and alloc.free_page_ids() == set(range(1, 11))
    alloc.allocate("again", 4, expected_tokens=20)  # the recycled pages, in ascending order: one run again
    assert alloc.block_table("again") == (1, 2) and alloc.reserved_pages("again") == tuple(range(3, 11))


def test_reservations_come_from_recycled_pages_in_ascending_order_once_the_fresh_ones_are_spent():
    alloc = PageAllocator(num_pages=9, page_size=1)
    for seq in range(8):
        alloc.allocate(seq, 1)  # every page handed out once
    for seq in (6, 2, 3, 7):
        alloc.free(seq)  # pages 3, 4, 7, 8 are free, in that disorder on the free list
    alloc.allocate("new", 2, expected_tokens=4)
    assert alloc.block_table("new") == (3, 4) and alloc.reserved_pages("new") == (7, 8)
