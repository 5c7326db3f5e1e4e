"""``/metrics``: the server's state in Prometheus' text format, with the official client library.

A registry per app (so that two servers in one process keep apart). Request counts, token counts
and latency histograms are recorded as requests go; the engine's own numbers (requests running and
waiting, KV pages in use, each cache's hits and queries, compilations since the server started)
are read from the engine's last published stats when Prometheus scrapes.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from mmjax.engine.warmup import total_compilations

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class ServerMetrics:
    """The metrics of one server (``render()`` is the body of ``GET /metrics``)."""

    def __init__(self, engine: Any, queue: Any):
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("mmjax_requests", "HTTP requests answered, by route and status class",
                                ["route", "status"], registry=r)
        self.rejected = Counter("mmjax_requests_rejected", "requests refused by admission control (HTTP 503)",
                                registry=r)
        self.prompt_tokens = Counter("mmjax_prompt_tokens", "prompt tokens of finished requests", registry=r)
        self.generation_tokens = Counter("mmjax_generation_tokens", "tokens generated", registry=r)
        self.ttft = Histogram("mmjax_time_to_first_token_seconds", "from admission to the first generated token",
                              buckets=_LATENCY_BUCKETS, registry=r)
        self.tpot = Histogram("mmjax_time_per_output_token_seconds", "mean time per output token after the "
                              "first, one observation per finished request", buckets=_LATENCY_BUCKETS, registry=r)
        r.register(_EngineCollector(engine, queue, total_compilations()))

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def track(self) -> RequestTimer:
        return RequestTimer(self)


class RequestTimer:
    """Times one request's tokens from the snapshots it receives (``seen``), reported once when it ends."""

    def __init__(self, metrics: ServerMetrics):
        self._metrics, self._start = metrics, time.monotonic()
        self._first: float | None = None
        self._tokens = 0
        self._done = False

    def seen(self, output: Any) -> None:
        now, tokens = time.monotonic(), len(output.token_ids)
        if tokens > self._tokens:
            self._metrics.generation_tokens.inc(tokens - self._tokens)
            if self._first is None:
                self._first = now
                self._metrics.ttft.observe(now - self._start)
            self._tokens = tokens
        if output.finished and not self._done:
            self._done = True
            self._metrics.prompt_tokens.inc(len(output.prompt_token_ids))
            if self._first is not None and tokens > 1:
                self._metrics.tpot.observe((now - self._first) / (tokens - 1))


class _EngineCollector(Collector):
    """Read at scrape time from what the engine loop publishes after each step."""

    def __init__(self, engine: Any, queue: Any, compilations_at_start: int):
        self._engine, self._queue, self._compilations_at_start = engine, queue, compilations_at_start

    def collect(self) -> Iterator[Any]:
        engine = self._engine
        scheduler = engine.scheduler
        yield _gauge("mmjax_num_requests_running", "requests in the running batch", len(scheduler.running))
        yield _gauge("mmjax_num_requests_waiting", "requests waiting for the running batch", len(scheduler.waiting))
        yield _gauge("mmjax_num_requests_admitted", "requests the server has admitted and not yet answered "
                     "(mapping, queued or running)", self._queue.admitted)
        total = sum(a.num_pages - 1 for a in engine.allocators)
        free = sum(a.num_free_pages for a in engine.allocators)
        yield _gauge("mmjax_kv_cache_pages_used", "KV cache pages in use (cached idle pages count as free)",
                     total - free)
        yield _gauge("mmjax_kv_cache_pages_total", "KV cache pages", total)
        caches = engine.stats.get("caches", {})
        for name in ("prefix_cache", "encoder_cache", "processor_cache"):
            stats = caches.get(name) or {}
            hits = stats.get("hits", 0)
            queries = stats.get("queries", hits + stats.get("misses", 0))
            yield _counter(f"mmjax_{name}_hits", f"{name.replace('_', ' ')} hits", hits)
            yield _counter(f"mmjax_{name}_queries", f"{name.replace('_', ' ')} look-ups", queries)
        yield _counter("mmjax_compilations_after_start", "XLA compilations since the server started (after its "
                       "warm-up: a non-zero count is a shape warm-up missed)",
                       total_compilations() - self._compilations_at_start)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)
