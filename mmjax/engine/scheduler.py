"""Continuous batching: which tokens of which requests run in the next step.

Plain Python on the host, like vLLM's scheduler. Each step has a token budget
(``max_num_batched_tokens``) and a sequence budget (``max_num_seqs``). Running
requests go first, one token each when decoding, a chunk of their prompt when
prefilling (chunked prefill); waiting requests are admitted in arrival order
while pages and budget allow. When a running request needs a page and none is
free, the most recently admitted request is preempted: its pages are freed and
it goes back to the front of the queue, to be recomputed later. Nothing fails
for lack of pages.

Data parallelism: with one ``PageAllocator`` per data replica (the mesh's
``"data"`` axis), each replica has its own pages and its own budgets, and all
replicas run in the same step. A waiting request is admitted to the replica
with the fewest running requests that can take it, so the load spreads; a
preempted request may come back on any replica.

Prefix caching (allocators with ``enable_caching``): an admitted request starts
from the longest chain of its full pages the replica has cached (at most all
but its last token, whose logits it needs), and its first chunk begins there.
A preempted request's pages stay cached, so coming back costs only what was evicted.

Bidirectional spans (Gemma 3's images: their tokens see each other, ``Request.bidirectional_spans``): a
prefill chunk never ends strictly inside one, since the span's first tokens would otherwise be computed
before its last ones exist (``fit_chunk``). A chunk that would end inside a span stops at the span's start,
or, when it starts inside the span, runs to the span's end or waits for a step with budget for it. A chunk
starts inside a span only after a prefix-cache hit (cached pages end on a page boundary): the span's cached
K/V came from a step that held the whole span, so they are what a full recomputation would give, and the
rest of the span's tokens see them. A preempted request recomputes from its cached pages the same way.
The engine refuses a span longer than the step's token budget (``max_num_batched_tokens``).
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Sequence

from mmjax.engine.request import Request, RequestStatus
from mmjax.kv_cache import PageAllocator


@dataclasses.dataclass(frozen=True)
class ScheduledChunk:
    """Tokens ``[start, stop)`` of ``request`` run in this step, on data replica ``replica``."""

    request: Request
    start: int
    stop: int
    replica: int = 0

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


def fit_chunk(spans: Sequence[tuple[int, int]], start: int, n: int, remaining: int) -> int:
    """How many of ``n`` tokens from ``start`` to run so the chunk does not end strictly inside a span.

    ``remaining``: the request's tokens left from ``start`` (a chunk never runs past them). 0: nothing
    fits this step (the chunk starts inside a span longer than ``n`` tokens).
    """
    stop = start + n
    for span_start, span_stop in spans:
        if span_start < stop < span_stop:
            if span_start > start:
                return span_start - start
            return 0 if span_stop - start > n or span_stop - start > remaining else span_stop - start
    return n


class Scheduler:
    """Admits, chunks and preempts requests over one ``PageAllocator`` per data replica.

    ``max_num_seqs`` and ``max_num_batched_tokens`` are per replica.
    """

    def __init__(self, allocators: PageAllocator | Sequence[PageAllocator], *, max_num_seqs: int,
                 max_num_batched_tokens: int):
        self.allocators = [allocators] if isinstance(allocators, PageAllocator) else list(allocators)
        if not self.allocators:
            raise ValueError("the scheduler needs at least one page allocator")
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.waiting: collections.deque[Request] = collections.deque()
        self.running: list[Request] = []  # admission order, all replicas
        self.prefix_queries = 0  # tokens of admitted requests looked up in the prefix cache
        self.prefix_hits = 0  # of those, tokens found cached

    @property
    def num_replicas(self) -> int:
        return len(self.allocators)

    def add(self, request: Request) -> None:
        self.waiting.append(request)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def running_on(self, replica: int) -> list[Request]:
        return [r for r in self.running if r.replica == replica]

    def schedule(self) -> SchedulerOutput:
        """Decide the next step. Allocates the pages the chosen tokens need."""
        budgets = [self.max_num_batched_tokens] * self.num_replicas
        chunks: list[ScheduledChunk] = []
        preempted: list[Request] = []
        closed: set[int] = set()  # replicas that had to preempt in this step: they admit nobody new
        for request in list(self.running):
            if request.status is not RequestStatus.RUNNING:
                continue  # preempted earlier in this loop
            replica = request.replica
            if budgets[replica] == 0:
                continue
            remaining = request.num_tokens - request.num_computed_tokens
            n = fit_chunk(request.bidirectional_spans, request.num_computed_tokens,
                          min(remaining, budgets[replica]), remaining)
            if n == 0:
                continue  # its next chunk is a whole span: it waits for a step with room for it
            if not self._make_room(request, n, preempted, closed):
                continue
            self.allocators[replica].append_slots(request.request_id, n)
            start = request.num_computed_tokens
            chunks.append(ScheduledChunk(request, start, start + n, replica))
            budgets[replica] -= n
        self._admit(budgets, chunks, closed)
        return SchedulerOutput(tuple(chunks), tuple(preempted))

    def _make_room(self, request: Request, n: int, preempted: list[Request], closed: set[int]) -> bool:
        """Preempt the newest running requests of ``request``'s replica until it can grow by ``n``;
        False if it went itself."""
        replica = request.replica
        allocator = self.allocators[replica]
        while not allocator.can_append(request.request_id, n):
            closed.add(replica)
            victim = self.running_on(replica)[-1]
            self.preempt(victim)
            preempted.append(victim)
            if victim is request:
                return False
        return True

    def _admit(self, budgets: list[int], chunks: list[ScheduledChunk], closed: set[int]) -> None:
        while self.waiting:
            request = self.waiting[0]
            placed = self._place(request, budgets, closed)
            if placed is None:
                break  # first come, first served: nobody overtakes the head of the queue
            replica, n, cached = placed
            self.waiting.popleft()
            start = len(cached) * self.allocators[replica].page_size
            # Its pages reserved as one run up to its longest length: consecutive pages are one stream to attention.
            self.allocators[replica].allocate(request.request_id, start + n, cached,
                                              expected_tokens=request.max_num_tokens)
            request.status, request.replica, request.num_computed_tokens = RequestStatus.RUNNING, replica, start
            self.running.append(request)
            chunks.append(ScheduledChunk(request, start, start + n, replica))
            budgets[replica] -= n
            if self.allocators[replica].enable_caching and request.reuses_pages:
                self.prefix_queries += request.num_tokens
                self.prefix_hits += start

    def _cached_pages(self, request: Request, allocator: PageAllocator) -> list[int]:
        """The replica's cached pages ``request`` may start from: its longest cached chain of full
        pages, short of its last token (which must run, for its logits)."""
        if not allocator.enable_caching or not request.reuses_pages:
            return []
        usable = (request.num_tokens - 1) // allocator.page_size
        return allocator.cached_prefix(request.page_hashes(usable, allocator.page_size))

    def _place(self, request: Request, budgets: list[int], closed: set[int]) -> tuple[int, int, list[int]] | None:
        """``(replica, first chunk length, cached pages)`` for a waiting request: the least busy
        replica that fits it."""
        counts = [0] * self.num_replicas
        for r in self.running:
            counts[r.replica] += 1
        order = sorted(range(self.num_replicas),
                       key=lambda r: (counts[r], -self.allocators[r].num_free_pages, r))
        for replica in order:
            if replica in closed or budgets[replica] == 0 or counts[replica] >= self.max_num_seqs:
                continue
            allocator = self.allocators[replica]
            cached = self._cached_pages(request, allocator)
            start = len(cached) * allocator.page_size
            remaining = request.num_tokens - start
            n = fit_chunk(request.bidirectional_spans, start, min(remaining, budgets[replica]), remaining)
            if n > 0 and allocator.can_allocate(-(-(start + n) // allocator.page_size) - len(cached), cached):
                return replica, n, cached
        return None

    def register_computed(self, request: Request) -> None:
        """Register ``request``'s full pages whose K/V are now computed in its replica's prefix cache."""
        allocator = self.allocators[request.replica]
        full = request.num_computed_tokens // allocator.page_size
        if allocator.enable_caching and request.shares_pages and full > allocator.num_registered(request.request_id):
            allocator.register(request.request_id, request.page_hashes(full, allocator.page_size))  # a page filled

    def reset_prefix_cache(self) -> None:
        """Forget every cached page (the KV cache was rebuilt)."""
        for allocator in self.allocators:
            allocator.reset_cache()

    def preempt(self, request: Request) -> None:
        """Free ``request``'s pages (those registered stay cached) and queue it (first) for recomputation."""
        self.allocators[request.replica].free(request.request_id)
        self.running.remove(request)
        request.num_computed_tokens = 0
        request.num_preemptions += 1
        request.status = RequestStatus.WAITING
        request.replica = None
        self.waiting.appendleft(request)

    def finish(self, request: Request) -> None:
        """Retire a finished request and free its pages."""
        if request.replica is not None and request.request_id in self.allocators[request.replica]:
            self.allocators[request.replica].free(request.request_id)
        if request in self.running:
            self.running.remove(request)
        request.status, request.replica = RequestStatus.FINISHED, None

    def abort(self, request: Request) -> None:
        if request in self.waiting:
            self.waiting.remove(request)
        self.finish(request)
