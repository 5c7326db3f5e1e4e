"""Continuous batching: which tokens of which requests run in the next step.

Plain Python on the host, like vLLM's scheduler. Each step has a token budget
(``max_num_batched_tokens``) and a sequence budget (``max_num_seqs``). Running
requests go first, one token each when decoding, a chunk of their prompt when
prefilling (chunked prefill); waiting requests are admitted in arrival order
while pages and budget allow. When a running request needs a page and none is
free, the most recently admitted request is preempted: its pages are freed and
it goes back to the front of the queue, to be recomputed later. Nothing fails
for lack of pages.
"""

from __future__ import annotations

import collections
import dataclasses

from mmjax.engine.request import Request, RequestStatus
from mmjax.kv_cache import PageAllocator


@dataclasses.dataclass(frozen=True)
class ScheduledChunk:
    """Tokens ``[start, stop)`` of ``request`` run in this step."""

    request: Request
    start: int
    stop: int

    @property
    def num_tokens(self) -> int:
        return self.stop - self.start

    @property
    def samples(self) -> bool:
        """Whether the step ends at the request's last known token, so a new one is sampled."""
        return self.stop == self.request.num_tokens


@dataclasses.dataclass(frozen=True)
class SchedulerOutput:
    chunks: tuple[ScheduledChunk, ...]
    preempted: tuple[Request, ...]


class Scheduler:
    """Admits, chunks and preempts requests over one ``PageAllocator``."""

    def __init__(self, allocator: PageAllocator, *, max_num_seqs: int, max_num_batched_tokens: int):
        self.allocator = allocator
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.waiting: collections.deque[Request] = collections.deque()
        self.running: list[Request] = []

    def add(self, request: Request) -> None:
        self.waiting.append(request)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> SchedulerOutput:
        """Decide the next step. Allocates the pages the chosen tokens need."""
        budget = self.max_num_batched_tokens
        chunks: list[ScheduledChunk] = []
        preempted: list[Request] = []
        for request in list(self.running):
            if budget == 0:
                break
            if request.status is not RequestStatus.RUNNING:
                continue  # preempted earlier in this loop
            n = min(request.num_tokens - request.num_computed_tokens, budget)
            if not self._make_room(request, n, preempted):
                continue
            self.allocator.append_slots(request.request_id, n)
            chunks.append(ScheduledChunk(request, request.num_computed_tokens, request.num_computed_tokens + n))
            budget -= n
        if not preempted:  # a step that had to preempt admits nobody new
            budget = self._admit(budget, chunks)
        return SchedulerOutput(tuple(chunks), tuple(preempted))

    def _make_room(self, request: Request, n: int, preempted: list[Request]) -> bool:
        """Preempt the newest running requests until ``request`` can grow by ``n``; False if it went itself."""
        while not self.allocator.can_append(request.request_id, n):
            victim = self.running[-1]
            self.preempt(victim)
            preempted.append(victim)
            if victim is request:
                return False
        return True

    def _admit(self, budget: int, chunks: list[ScheduledChunk]) -> int:
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            request = self.waiting[0]
            n = min(request.num_tokens, budget)
            if not self.allocator.can_allocate(self.allocator.pages_needed(request.request_id, n)):
                break
            self.waiting.popleft()
            self.allocator.allocate(request.request_id, n)
            request.status = RequestStatus.RUNNING
            self.running.append(request)
            chunks.append(ScheduledChunk(request, 0, n))
            budget -= n
        return budget

    def preempt(self, request: Request) -> None:
        """Free ``request``'s pages and queue it (first) for recomputation."""
        self.allocator.free(request.request_id)
        self.running.remove(request)
        request.num_computed_tokens = 0
        request.num_preemptions += 1
        request.status = RequestStatus.WAITING
        self.waiting.appendleft(request)

    def finish(self, request: Request) -> None:
        """Retire a finished request and free its pages."""
        if request.request_id in self.allocator:
            self.allocator.free(request.request_id)
        if request in self.running:
            self.running.remove(request)
        request.status = RequestStatus.FINISHED

    def abort(self, request: Request) -> None:
        if request in self.waiting:
            self.waiting.remove(request)
        self.finish(request)
