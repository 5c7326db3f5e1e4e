"""The page allocators and the scheduler under random interleavings of add, step, finish, abort and preempt.

A ``hypothesis`` state machine: whatever the order, no page is lost, none is
held by two sequences, the null page is never handed out, waiting requests
hold nothing, and every page comes back when all requests end.
``MMJAX_FUZZ_EXAMPLES`` scales the example budget.
"""

from __future__ import annotations

import os

import numpy as np
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from mmjax.engine.request import Request, RequestStatus
from mmjax.engine.scheduler import Scheduler
from mmjax.kv_cache import NULL_PAGE, PageAllocator
from mmjax.registry import ProcessedPrompt

PAGE_SIZE = 4


def fake_request(name: str, length: int, arrival: int) -> Request:
    processed = ProcessedPrompt(token_ids=np.arange(length, dtype=np.int32), placeholders={})
    return Request(request_id=name, processed=processed, params=None, seed=0, detokenizer=None,
                   arrival=arrival, mm_rows=np.full(length, -1, np.int32))


class SchedulerMachine(RuleBasedStateMachine):
    @initialize(replicas=st.integers(1, 2), pages=st.integers(4, 24), seqs=st.integers(1, 4),
                budget=st.integers(4, 40))
    def setup(self, replicas, pages, seqs, budget):
        self.allocators = [PageAllocator(pages, PAGE_SIZE) for _ in range(replicas)]
        self.scheduler = Scheduler(self.allocators, max_num_seqs=seqs, max_num_batched_tokens=max(budget, seqs))
        self.max_len = (pages - 1) * PAGE_SIZE  # a request that fits alone in one replica's cache
        self.requests: list[Request] = []
        self.count = 0

    @rule(length=st.integers(1, 40))
    def add(self, length):
        request = fake_request(f"r{self.count}", min(length, self.max_len - 8), self.count)
        self.count += 1
        self.requests.append(request)
        self.scheduler.add(request)

    @rule()
    def step(self):
        for chunk in self.scheduler.schedule().chunks:  # pretend the step ran
            request = chunk.request
            assert request.status is RequestStatus.RUNNING and request.replica == chunk.replica
            assert self.allocators[chunk.replica].num_tokens(request.request_id) >= chunk.stop
            request.num_computed_tokens = chunk.stop
            if chunk.samples:
                request.output_token_ids.append(1)
                if request.num_tokens >= self.max_len:
                    self.scheduler.finish(request)

    @precondition(lambda self: self.scheduler.running)
    @rule(data=st.data())
    def finish(self, data):
        self.scheduler.finish(data.draw(st.sampled_from(self.scheduler.running)))

    @precondition(lambda self: any(not r.finished for r in self.requests))
    @rule(data=st.data())
    def abort(self, data):
        self.scheduler.abort(data.draw(st.sampled_from([r for r in self.requests if not r.finished])))

    @precondition(lambda self: self.scheduler.running)
    @rule(data=st.data())
    def preempt(self, data):
        self.scheduler.preempt(data.draw(st.sampled_from(self.scheduler.running)))

    @invariant()
    def pages_are_neither_lost_nor_shared(self):
        for replica, allocator in enumerate(self.allocators):
            held = [p for seq in allocator.sequences() for p in allocator.block_table(seq)]
            assert NULL_PAGE not in held
            assert len(held) == len(set(held)), "a page is held by two sequences"
            assert len(held) + allocator.num_free_pages == allocator.num_pages - 1, "a page was lost"
            running = {r.request_id for r in self.scheduler.running if r.replica == replica}
            assert set(allocator.sequences()) == running, "only running requests hold pages"

    @invariant()
    def every_request_is_in_exactly_one_place(self):
        waiting, running = list(self.scheduler.waiting), self.scheduler.running
        for request in self.requests:
            places = (request in waiting) + (request in running) + request.finished
            assert places == 1, request

    def teardown(self):
        if not hasattr(self, "scheduler"):
            return
        for request in self.requests:
            if not request.finished:
                self.scheduler.abort(request)
        assert not self.scheduler.has_unfinished()
        for allocator in self.allocators:
            assert allocator.num_free_pages == allocator.num_pages - 1 and not allocator.sequences()


TestSchedulerMachine = SchedulerMachine.TestCase
TestSchedulerMachine.settings = settings(max_examples=int(os.environ.get("MMJAX_FUZZ_EXAMPLES", "25")) * 2,
                                        stateful_step_count=40, deadline=None)
