"""Server-sent events of streamed answers, and what a client hears of a request that failed while it ran.

A failure inside the engine (``RequestOutput.error``) is logged with the request id; the client
gets a ``server_error`` naming that id, never the exception's text.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from starlette.responses import StreamingResponse

from mmjax.engine.outputs import RequestOutput
from mmjax.serving import responses
from mmjax.serving.engine_loop import OutputStream
from mmjax.serving.errors import HTTPError, internal_error_message

log = logging.getLogger("mmjax.serving")

_DONE = "data: [DONE]\n\n"


class EventStream(StreamingResponse):
    """``text/event-stream`` that calls ``on_close`` however it ends: finished, failed, or the client
    gone before the first event (when the events' generator never even started)."""

    def __init__(self, events: AsyncIterator[str], on_close: Callable[[], None]):
        super().__init__(events, media_type="text/event-stream")
        self._on_close = on_close

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._on_close()


def sse(payload: Any) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=True)}\n\n"


def failure_body(output: RequestOutput, request_id: str) -> dict[str, Any]:
    """The error event of a request that failed while it ran (the details go to the log)."""
    log.error("request %s failed while it ran: %s", request_id, output.error)
    body = responses.error_body(internal_error_message(request_id), "server_error")
    body["error"]["request_id"] = request_id
    return body


def raise_if_failed(output: RequestOutput, request_id: str) -> None:
    if output.error is not None:
        failure_body(output, request_id)
        raise HTTPError(500, internal_error_message(request_id), kind="server_error")


async def chat_events(stream: OutputStream, ids: tuple[str, str], created: int, model: str,
                      top_logprobs: int | None, include_usage: bool,
                      seen: Callable[[RequestOutput], None]) -> AsyncIterator[str]:
    """``chat.completion.chunk`` events: the role, the text as it grows, the finish reason, usage, [DONE].

    ``ids``: (response id, request id); ``seen``: each snapshot (metrics).
    """
    response_id, request_id = ids
    async with stream:
        yield sse(responses.chat_chunk(response_id, created, model, {"role": "assistant", "content": ""}))
        sent_text = sent_tokens = 0
        output = None
        async for output in stream:
            seen(output)
            if output.error is not None:
                yield sse(failure_body(output, request_id))
                break
            text = output.text[sent_text:]
            logprobs = None if top_logprobs is None else responses.chat_logprobs(output, sent_tokens,
                                                                                 top_logprobs)
            if text or (logprobs and logprobs["content"]):
                yield sse(responses.chat_chunk(response_id, created, model, {"content": text},
                                               logprobs=logprobs))
            sent_text, sent_tokens = len(output.text), len(output.token_ids)
            if output.finished:
                yield sse(responses.chat_chunk(response_id, created, model, {},
                                               finish=responses.finish_reason(output)))
        if include_usage and output is not None and output.error is None:
            yield sse(responses.usage_chunk(response_id, created, model, "chat.completion.chunk", [output]))
    yield _DONE


async def completion_events(streams: list[OutputStream], ids: tuple[str, str], created: int, model: str,
                            logprobs: int | None, include_usage: bool,
                            seen: list[Callable[[RequestOutput], None]]) -> AsyncIterator[str]:
    """``text_completion`` events of every prompt of the request, as each grows, then usage and [DONE]."""
    response_id, request_id = ids
    merged: asyncio.Queue = asyncio.Queue()

    async def pump(index: int, stream: OutputStream) -> None:
        async for output in stream:
            await merged.put((index, output))

    tasks = [asyncio.ensure_future(pump(i, s)) for i, s in enumerate(streams)]
    sent = [(0, 0)] * len(streams)
    finals: dict[int, RequestOutput] = {}
    try:
        while len(finals) < len(streams):
            index, output = await merged.get()
            seen[index](output)
            if output.error is not None:
                yield sse(failure_body(output, request_id))
                break
            text_sent, tokens_sent = sent[index]
            text = output.text[text_sent:]
            lp = None if logprobs is None else responses.completion_logprobs(output, tokens_sent, logprobs, text_sent)
            finish = responses.finish_reason(output) if output.finished else None
            if text or finish or (lp and lp["tokens"]):
                yield sse(responses.completion_chunk(response_id, created, model, index, text, finish=finish,
                                                     logprobs=lp))
            sent[index] = (len(output.text), len(output.token_ids))
            if output.finished:
                finals[index] = output
        if include_usage and len(finals) == len(streams):
            yield sse(responses.usage_chunk(response_id, created, model, "text_completion",
                                            [finals[i] for i in range(len(streams))]))
        yield _DONE
    finally:
        for task in tasks:
            task.cancel()
        for stream in streams:
            stream.close()
