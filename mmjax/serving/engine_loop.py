"""One thread runs the engine's steps; any other thread (or an asyncio loop) adds and aborts requests.

The engine is not thread-safe, so only the loop's thread touches it: ``submit`` and ``abort``
post commands that the loop carries out between steps. A request therefore joins the running
batch at the next step boundary after it arrives, and each step's new tokens are handed to
the request's sink as a ``RequestOutput`` snapshot as soon as the step ends.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from mmjax.engine.errors import StepError
from mmjax.engine.generate import to_output
from mmjax.engine.outputs import RequestOutput
from mmjax.engine.request import Request
from mmjax.engine.sampling_params import SamplingParams
from mmjax.registry import ProcessedPrompt

log = logging.getLogger(__name__)

#: Receives every new snapshot of one request; the last one has ``finished`` set.
Sink = Callable[[RequestOutput], None]


class EngineStopped(RuntimeError):
    """The loop is shutting down (or died) and takes no new requests."""


@dataclasses.dataclass
class _Live:
    request: Request
    sink: Sink


class EngineLoop:
    """Runs ``engine.step()`` on a background thread while requests come and go.

    Attributes:
      engine: the ``LLMEngine`` driven (only the loop's thread may call it once started).
      error: the exception that stopped the loop, if one did (every live request was failed).
    """

    def __init__(self, engine: Any, *, idle_wait_s: float = 0.05):
        self.engine = engine
        self.error: BaseException | None = None
        self._idle_wait_s = idle_wait_s
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self._live: dict[str, _Live] = {}
        self._accepting = True
        self._drain_deadline: float | None = None  # set by shutdown(): finish until then, then abort
        self._thread = threading.Thread(target=self._run, name="mmjax-engine-loop", daemon=True)

    # -- any thread ------------------------------------------------------------------

    def start(self) -> EngineLoop:
        self._thread.start()
        return self

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def submit(self, processed: ProcessedPrompt, params: SamplingParams, request_id: str,
               sink: Sink) -> concurrent.futures.Future:
        """Queue a mapped prompt; the future gives its ``Request`` once the engine took it, or the
        engine's error (ValueError / TypeError for a prompt it refuses, ``EngineStopped``)."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        if not self._accepting or not self.running:
            future.set_exception(EngineStopped("the engine is shutting down and takes no new requests"))
            return future
        self._commands.put(("add", (processed, params, request_id, sink, future)))
        if not self.running:  # the loop ended between the check and the put: nobody else will answer
            self._refuse_queued()
        return future

    def abort(self, request_id: str) -> None:
        """Stop a request (its client went away); its pages are freed at the next step boundary."""
        self._commands.put(("abort", request_id))

    def shutdown(self, drain_s: float = 0.0) -> None:
        """Refuse new requests, let the live ones run for up to ``drain_s`` seconds, abort the
        rest (their sinks get a final output with ``error`` set) and stop the thread."""
        self._accepting = False
        self._commands.put(("stop", time.monotonic() + max(0.0, drain_s)))
        if self.running:
            self._thread.join()

    async def open(self, processed: ProcessedPrompt, params: SamplingParams, request_id: str) -> OutputStream:
        """From an asyncio task: queue the request and wait until the engine took it.

        Raises: the engine's refusal (ValueError / TypeError, before any work), ``EngineStopped``.
        """
        stream = OutputStream(self, request_id)
        await asyncio.wrap_future(self.submit(processed, params, request_id, stream.sink))
        return stream

    # -- the loop's thread ---------------------------------------------------------------

    def _run(self) -> None:
        try:
            while True:
                self._take_commands(block=not self.engine.has_unfinished_requests())
                if self._drain_deadline is not None and (
                        not self.engine.has_unfinished_requests() or time.monotonic() >= self._drain_deadline):
                    break
                if self.engine.has_unfinished_requests():
                    self._step()
        except BaseException as error:  # noqa: BLE001 (a bug in the loop itself: fail everyone, say why)
            log.exception("the engine loop stopped")
            self.error = error
        finally:
            self._accepting = False
            self._abort_all("the server is shutting down" if self.error is None else f"the engine loop failed: "
                            f"{type(self.error).__name__}: {self.error}")
            self._refuse_queued()

    def _take_commands(self, block: bool) -> None:
        try:
            command = self._commands.get(timeout=self._idle_wait_s) if block else self._commands.get_nowait()
        except queue.Empty:
            return
        while True:
            self._carry_out(*command)
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return

    def _carry_out(self, kind: str, payload: Any) -> None:
        if kind == "add":
            processed, params, request_id, sink, future = payload
            if not future.set_running_or_notify_cancel():
                return
            if self._drain_deadline is not None:
                future.set_exception(EngineStopped("the engine is shutting down and takes no new requests"))
                return
            try:
                request = self.engine.add_processed(processed, params, request_id)
            except (TypeError, ValueError) as error:
                future.set_exception(error)
                return
            self._live[request_id] = _Live(request, sink)
            future.set_result(request)
        elif kind == "abort":
            live = self._live.pop(payload, None)
            if live is not None and not live.request.finished:
                self.engine.abort(live.request)
        elif kind == "stop":
            self._drain_deadline = payload

    def _step(self) -> None:
        try:
            updated = self.engine.step()
        except StepError as error:  # its requests are finished with .error; the engine is whole again
            updated = list(error.requests)
        for request in updated:
            live = self._live.get(request.request_id)
            if live is None or live.request is not request:
                continue
            if request.finished:
                del self._live[request.request_id]
            live.sink(to_output(request))

    def _abort_all(self, why: str) -> None:
        for request_id, live in list(self._live.items()):
            if not live.request.finished:
                try:
                    self.engine.abort(live.request)
                except Exception:  # noqa: BLE001 (the engine may be what failed; the client still hears why)
                    log.exception("aborting request %s", request_id)
                live.request.error = why
                live.request.finish_reason = "error"
            live.sink(to_output(live.request))
        self._live.clear()

    def _refuse_queued(self) -> None:
        while True:
            try:
                kind, payload = self._commands.get_nowait()
            except queue.Empty:
                return
            if kind == "add" and payload[-1].set_running_or_notify_cancel():
                payload[-1].set_exception(EngineStopped("the engine is shutting down and takes no new requests"))


class OutputStream:
    """The snapshots of one request, as an async iterator (the newest one when several are waiting).

    Use it as ``async with stream: async for output in stream: ...``: leaving the block before the
    request finished (the client went away, the task was cancelled) aborts it and frees its pages.
    """

    def __init__(self, loop: EngineLoop, request_id: str):
        self.request_id = request_id
        self.finished = False
        self._loop = loop
        self._aio = asyncio.get_running_loop()
        self._outputs: asyncio.Queue = asyncio.Queue()

    def sink(self, output: RequestOutput) -> None:
        """Called on the engine loop's thread."""
        try:
            self._aio.call_soon_threadsafe(self._outputs.put_nowait, output)
        except RuntimeError:  # the event loop has closed: nobody is waiting any more
            pass

    def __aiter__(self) -> OutputStream:
        return self

    async def __anext__(self) -> RequestOutput:
        if self.finished:
            raise StopAsyncIteration
        output = await self._outputs.get()
        while not self._outputs.empty():  # snapshots are cumulative: the newest says everything
            output = self._outputs.get_nowait()
        self.finished = output.finished
        return output

    async def last(self) -> RequestOutput:
        """The final snapshot (waits for the request to finish)."""
        output = None
        async for output in self:
            pass
        assert output is not None
        return output

    def close(self) -> None:
        if not self.finished:
            self.finished = True
            self._loop.abort(self.request_id)

    async def __aenter__(self) -> OutputStream:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self.close()
