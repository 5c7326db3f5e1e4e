"""The scheduler's budgets, chunking and preemption, on fake requests (no model)."""

from __future__ import annotations

import numpy as np
import pytest

from mmjax.engine.memory import plan_kv_cache
from mmjax.engine.config import EngineConfig
from mmjax.engine.request import Request, RequestStatus
from mmjax.engine.scheduler import Scheduler
from mmjax.kv_cache import PageAllocator
from mmjax.registry import ProcessedPrompt


def fake_request(name: str, length: int, arrival: int) -> Request:
    processed = ProcessedPrompt(token_ids=np.arange(length, dtype=np.int32), placeholders={})
    return Request(request_id=name, processed=processed, params=None, seed=0, detokenizer=None,
                   arrival=arrival, mm_rows=np.full(length, -1, np.int32))


def run_step(scheduler: Scheduler) -> dict[str, tuple[int, int]]:
    """Schedule, then pretend the step ran: computed tokens advance, samplers get one new token."""
    out = scheduler.schedule()
    for chunk in out.chunks:
        chunk.request.num_computed_tokens = chunk.stop
        if chunk.samples:
            chunk.request.output_token_ids.append(7)
    return {c.request.request_id: (c.start, c.stop) for c in out.chunks}


def test_token_budget_chunks_long_prompts_and_decodes_run_first():
    scheduler = Scheduler(PageAllocator(64, 4), max_num_seqs=4, max_num_batched_tokens=10)
    a, b = fake_request("a", 7, 0), fake_request("b", 12, 1)
    scheduler.add(a), scheduler.add(b)
    assert run_step(scheduler) == {"a": (0, 7), "b": (0, 3)}
    assert run_step(scheduler) == {"a": (7, 8), "b": (3, 12)}  # a decodes, b finishes its prompt
    assert run_step(scheduler) == {"a": (8, 9), "b": (12, 13)}


def test_sequence_budget():
    scheduler = Scheduler(PageAllocator(64, 4), max_num_seqs=2, max_num_batched_tokens=100)
    for i in range(3):
        scheduler.add(fake_request(str(i), 3, i))
    assert set(run_step(scheduler)) == {"0", "1"}
    assert len(scheduler.waiting) == 1


def test_preemption_frees_the_newest_and_recomputes_it_later():
    allocator = PageAllocator(7, 4)  # 6 usable pages = 24 tokens
    scheduler = Scheduler(allocator, max_num_seqs=4, max_num_batched_tokens=64)
    a, b = fake_request("a", 11, 0), fake_request("b", 11, 1)
    scheduler.add(a), scheduler.add(b)
    run_step(scheduler)  # both prefilled: 3 pages each, cache full
    assert allocator.num_free_pages == 0
    steps = [run_step(scheduler) for _ in range(3)]
    assert b.num_preemptions == 1 and b.status is RequestStatus.WAITING and b.num_computed_tokens == 0
    assert all("a" in s for s in steps)  # the oldest request always makes progress
    pages = [p for r in scheduler.running for p in allocator.block_table(r.request_id)]
    assert len(pages) == len(set(pages)) and 0 not in pages  # no page owned twice, null page never used
    scheduler.finish(a)
    generated_before = list(b.output_token_ids)
    resumed = run_step(scheduler)
    assert resumed["b"] == (0, 11 + len(generated_before))  # prompt and earlier output, recomputed
    assert b.output_token_ids[: len(generated_before)] == generated_before  # nothing generated is lost


def test_memory_plan_formula_and_clear_error():
    kwargs = dict(num_layers=4, num_kv_heads=2, head_dim=16, dtype="float32", page_size=8,
                  weights_bytes=1000, activation_bytes=500, min_pages=10, max_useful_pages=10**6)
    page_bytes = 4 * 2 * 2 * 8 * 16 * 4  # layers x (K and V) x heads x tokens x dim x bytes
    plan = plan_kv_cache(kv_cache_bytes=100 * page_bytes, **kwargs)
    assert plan.page_bytes == page_bytes and plan.num_pages == 100 and plan.max_cached_tokens == 99 * 8
    assert "kv_cache_bytes set by the user" in plan.describe()
    assert plan_kv_cache(num_pages=12, **kwargs).num_pages == 12
    with pytest.raises(ValueError, match=r"would hold 5 pages but one longest sequence needs 10"):
        plan_kv_cache(kv_cache_bytes=5 * page_bytes, **kwargs)
    capped = plan_kv_cache(**{**kwargs, "max_useful_pages": 33})
    assert capped.num_pages == 33 and "capped" in capped.source


def test_the_worst_case_is_estimated_only_where_the_budget_depends_on_it(monkeypatch):
    """On CPU (no memory statistics) the budget is the host share: the estimate (two compiled programs
    in the engine) is not run; on a device that reports its memory it is, and it is subtracted."""
    from mmjax.engine import memory

    def must_not_run():
        raise AssertionError("estimated a figure the budget does not use")

    kwargs = dict(num_layers=4, num_kv_heads=2, head_dim=16, dtype="float32", page_size=8,
                  weights_bytes=1000, min_pages=10, max_useful_pages=10**6)
    page_bytes = 4 * 2 * 2 * 8 * 16 * 4
    host = plan_kv_cache(activation_bytes=must_not_run, **kwargs)
    assert host.activation_bytes is None and "not estimated" in host.describe()
    assert plan_kv_cache(activation_bytes=must_not_run, num_pages=12, **kwargs).num_pages == 12
    monkeypatch.setattr(memory, "device_memory_bytes", lambda: 1000 + 500 + 40 * page_bytes)
    device = plan_kv_cache(activation_bytes=lambda: 500, memory_utilization=1.0, **kwargs)
    assert device.activation_bytes == 500 and device.num_pages == 40


@pytest.mark.parametrize("kwargs, message", [
    (dict(page_size=0), "page_size must be an int >= 1"),
    (dict(max_num_seqs=16, max_num_batched_tokens=8), "must be >= max_num_seqs"),
    (dict(num_pages=1), "num_pages must be >= 2"),
    (dict(memory_utilization=1.5), "memory_utilization"),
    (dict(impl="cuda"), "impl must be"),
])
def test_engine_config_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        EngineConfig(**kwargs)


def test_token_buckets():
    assert EngineConfig(max_num_seqs=8, max_num_batched_tokens=100).token_buckets == (8, 16, 32, 64, 100)
    assert EngineConfig(max_num_seqs=16).decode_buckets == (1, 2, 4, 8, 16)
    assert EngineConfig(max_num_seqs=12).decode_buckets == (1, 2, 4, 8, 12)


def test_a_prefill_chunk_never_ends_inside_a_bidirectional_span():
    scheduler = Scheduler(PageAllocator(64, 4), max_num_seqs=4, max_num_batched_tokens=10)
    a = fake_request("a", 20, 0)
    a.bidirectional_spans = ((6, 14),)  # an 8-token image: a 10-token chunk from 0 would end inside it
    scheduler.add(a)
    assert run_step(scheduler) == {"a": (0, 6)}  # stops at the image's start
    assert run_step(scheduler) == {"a": (6, 16)}  # the whole image in one chunk
    assert run_step(scheduler) == {"a": (16, 20)}


def test_a_chunk_starting_inside_a_span_runs_to_its_end_or_waits():
    from mmjax.engine.scheduler import fit_chunk

    spans = ((4, 12),)
    assert fit_chunk(spans, 8, 2, remaining=10) == 0  # from a cache hit at 8: 4 tokens needed, 2 fit
    assert fit_chunk(spans, 8, 4, remaining=10) == 4  # exactly to the span's end
    assert fit_chunk(spans, 8, 6, remaining=10) == 6  # past it
    assert fit_chunk(spans, 0, 12, remaining=20) == 12  # ends exactly at the end: whole
    assert fit_chunk(spans, 12, 3, remaining=3) == 3  # after it: anything
    # A budget another request used: the image waits for the next step, nothing else is cut.
    scheduler = Scheduler(PageAllocator(64, 4), max_num_seqs=4, max_num_batched_tokens=10)
    a, b = fake_request("a", 8, 0), fake_request("b", 20, 1)
    b.bidirectional_spans = ((2, 11),)
    scheduler.add(a), scheduler.add(b)
    assert run_step(scheduler) == {"a": (0, 8), "b": (0, 2)}
    assert run_step(scheduler) == {"a": (8, 9), "b": (2, 11)}
