"""Scheduling over data replicas: each has its own pages and budgets, load spreads, steps pack per replica."""

from __future__ import annotations

import numpy as np

from mmjax.engine.batch import build_step_batch
from mmjax.engine.scheduler import Scheduler
from mmjax.kv_cache import PageAllocator, build_attention_metadata
from tests.engine.test_scheduler import fake_request, run_step


def two_replicas(num_pages: int = 64, **budgets) -> tuple[Scheduler, list[PageAllocator]]:
    allocators = [PageAllocator(num_pages, 4), PageAllocator(num_pages, 4)]
    return Scheduler(allocators, **{"max_num_seqs": 4, "max_num_batched_tokens": 10, **budgets}), allocators


def test_requests_spread_over_replicas_and_each_has_its_own_token_budget():
    scheduler, allocators = two_replicas()
    a, b, c = fake_request("a", 7, 0), fake_request("b", 7, 1), fake_request("c", 3, 2)
    for r in (a, b, c):
        scheduler.add(r)
    # One replica's 10-token budget would chunk b; two replicas prefill a and b whole; c ties (one
    # running request, same free pages on each) and goes to the first replica.
    assert run_step(scheduler) == {"a": (0, 7), "b": (0, 7), "c": (0, 3)}
    assert (a.replica, b.replica, c.replica) == (0, 1, 0)
    assert set(allocators[0].sequences()) == {"a", "c"} and set(allocators[1].sequences()) == {"b"}
    d = fake_request("d", 3, 3)
    scheduler.add(d)
    run_step(scheduler)
    assert d.replica == 1  # the replica with fewer running requests


def test_sequence_budget_is_per_replica():
    scheduler, _ = two_replicas(max_num_seqs=2, max_num_batched_tokens=100)
    for i in range(5):
        scheduler.add(fake_request(str(i), 3, i))
    assert set(run_step(scheduler)) == {"0", "1", "2", "3"}  # 2 per replica
    assert [len(scheduler.running_on(r)) for r in (0, 1)] == [2, 2] and len(scheduler.waiting) == 1


def test_preemption_stays_within_the_replica_that_ran_out():
    scheduler, allocators = two_replicas(num_pages=7, max_num_batched_tokens=64)  # 6 usable pages each
    requests = [fake_request(name, 11, i) for i, name in enumerate("abcd")]  # 3 pages each: both replicas full
    for r in requests:
        scheduler.add(r)
    run_step(scheduler)
    assert [r.replica for r in requests] == [0, 1, 0, 1]
    for _ in range(2):
        run_step(scheduler)
    a, b, c, d = requests
    assert c.num_preemptions == 1 and d.num_preemptions == 1  # the newest of each replica
    assert a.num_preemptions == 0 and b.num_preemptions == 0
    for allocator in allocators:
        owned = [p for s in allocator.sequences() for p in allocator.block_table(s)]
        assert len(owned) == len(set(owned)) and 0 not in owned


def test_a_step_batch_is_one_ragged_batch_per_replica_with_local_page_ids():
    scheduler, allocators = two_replicas()
    for i, length in enumerate([5, 9, 2]):
        scheduler.add(fake_request("abc"[i], length, i))
    chunks = scheduler.schedule().chunks
    batch = build_step_batch(chunks, allocators, token_buckets=[4, 8, 16], max_num_seqs=4, pages_per_seq=6)
    assert batch.input_ids.shape == (2, 16)  # replica 0 needs 5 + 2 -> 8, replica 1 needs 9 -> 16: both get 16
    for r in (0, 1):
        mine = [c for c in chunks if c.replica == r]
        want = build_attention_metadata([allocators[r].block_table(c.request.request_id) for c in mine],
                                        [c.stop for c in mine], [c.num_tokens for c in mine], page_size=4,
                                        token_buckets=[16], seq_buckets=[4], page_buckets=[6])
        for field in ("block_tables", "kv_lens", "cu_q_lens", "num_seqs", "slot_mapping", "positions"):
            np.testing.assert_array_equal(getattr(batch.metadata, field)[r], getattr(want, field), err_msg=field)
        flat_ids = batch.input_ids.reshape(-1)
        for chunk in mine:
            i = chunks.index(chunk)
            start = batch.chunk_offsets[i]
            assert start // 16 == r
            np.testing.assert_array_equal(flat_ids[start:start + chunk.num_tokens],
                                          chunk.request.token_ids(chunk.start, chunk.stop))
            # The sampled row: replica r's block of S = 4 rows, at the chunk's index within the replica.
            row = batch.sample_rows[i]
            assert row // 4 == r
            assert batch.logits_indices[r, row % 4] == start % 16 + chunk.num_tokens - 1
    assert batch.metadata.max_q_len == 16
