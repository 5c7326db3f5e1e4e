"""The OpenAI-compatible HTTP API (FastAPI): ``/v1/chat/completions``, ``/v1/completions``, ``/v1/models``,
``/health``.

A request is checked, its images loaded and its prompt mapped on a worker thread (never on the
thread that runs the steps), then handed to the ``EngineLoop``, which adds it to the running
batch at the next step. Every refusal is an HTTP 4xx with OpenAI's error JSON, sent before any
engine work; whatever one request does, the others keep being served.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from mmjax.engine.outputs import RequestOutput
from mmjax.engine.prompt_feed import PROMPT_ERRORS
from mmjax.engine.sampling_params import SamplingParams
from mmjax.registry import ProcessedPrompt
from mmjax.serving import responses
from mmjax.serving.chat import chat_prompt, chat_template_of
from mmjax.serving.engine_loop import EngineLoop, EngineStopped, OutputStream
from mmjax.serving.media import MediaLimits
from mmjax.serving.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    RequestRefused,
    describe_validation_error,
)
from mmjax.engine.loaded_model import LoadedModel


@dataclasses.dataclass(frozen=True, kw_only=True)
class ServerConfig:
    """How the server treats requests (the engine's own settings are its ``EngineConfig``).

    Attributes:
      model_name: the name clients pass as ``model`` (and ``/v1/models`` lists).
      chat_template: Jinja text or a file to use instead of the checkpoint's template.
      media: limits on image URLs: fetch timeout, bytes, pixels, the local directory allowed.
      max_request_bytes: most bytes of one request body (HTTP 413 beyond).
      mapping_threads: worker threads that load images and map prompts while the engine steps
        (default: the host's cores, at most 4; at least 1, so that the event loop never maps).
      shutdown_drain_s: on shutdown, seconds in-flight requests may take to finish before they
        are aborted.
    """

    model_name: str
    chat_template: str | None = None
    media: MediaLimits = MediaLimits()
    max_request_bytes: int = 32 * 2**20
    mapping_threads: int | None = None
    shutdown_drain_s: float = 30.0

    def __post_init__(self):
        if self.mapping_threads is not None and (not isinstance(self.mapping_threads, int)
                                                 or self.mapping_threads < 1):
            raise ValueError(f"mapping_threads must be an int >= 1 (the server maps prompts off its event "
                             f"loop), got {self.mapping_threads!r}")


class HTTPError(Exception):
    """Answer with ``status`` and OpenAI's error JSON."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status, self.kind, self.param, self.code = status, kind, param, code


def bad_request(error: Exception) -> HTTPError:
    return HTTPError(400, str(error), param=getattr(error, "param", None))


class ServingState:
    """What the routes share: the model, the engine loop, the chat template, the mapping threads."""

    def __init__(self, llm: LoadedModel, engine: Any, config: ServerConfig):
        self.llm, self.engine, self.config = llm, engine, config
        self.loop = EngineLoop(engine)
        self.created = int(time.time())
        try:
            self.chat_template: str | None = chat_template_of(llm, config.chat_template)
            self.chat_template_error = ""
        except ValueError as err:  # no template: completions still work, chat requests hear why
            if config.chat_template is not None:
                raise
            self.chat_template, self.chat_template_error = None, str(err)
        self.mapper = llm.prompt_mapper(config.mapping_threads)

    async def map_off_loop(self, work: Callable[[Any], ProcessedPrompt]) -> ProcessedPrompt:
        """Run ``work(llm)`` on a mapping thread (with its own tokenizer); a refusal there becomes HTTP 400."""
        try:
            return await asyncio.wrap_future(self.mapper.submit(work))
        except PROMPT_ERRORS as err:
            raise bad_request(err) from err

    async def open(self, processed: ProcessedPrompt, params: SamplingParams) -> OutputStream:
        try:
            return await self.loop.open(processed, params, f"req-{uuid.uuid4().hex}")
        except (ValueError, TypeError) as err:
            raise bad_request(err) from err
        except EngineStopped as err:
            raise HTTPError(503, str(err), kind="service_unavailable") from err

    def close(self) -> None:
        self.loop.shutdown(0.0)


def build_app(llm: LoadedModel, engine: Any, config: ServerConfig) -> FastAPI:
    """The FastAPI app serving ``engine`` (an ``LLMEngine`` of ``llm``); its lifespan starts and stops
    the engine loop (``app.state.serving``)."""
    state = ServingState(llm, engine, config)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state.loop.start()
        yield
        state.close()

    app = FastAPI(title="mmjax", lifespan=lifespan)
    app.state.serving = state

    @app.exception_handler(HTTPError)
    async def _http_error(request: Request, error: HTTPError) -> JSONResponse:
        return JSONResponse(responses.error_body(str(error), error.kind, error.param, error.code), error.status)

    @app.exception_handler(StarletteHTTPException)
    async def _starlette_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if error.status_code == 404 else "invalid_request_error"
        return JSONResponse(responses.error_body(str(error.detail), kind), error.status_code)

    @app.get("/health")
    async def health() -> JSONResponse:
        if not state.loop.running:
            why = state.loop.error or "not running"
            return JSONResponse(responses.error_body(f"the engine loop is down: {why}", "service_unavailable"), 503)
        return JSONResponse({"status": "ok"})

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [{
            "id": config.model_name, "object": "model", "created": state.created, "owned_by": "mmjax",
            "max_model_len": engine.max_model_len}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        body = _parse(ChatCompletionRequest, await _read_json(request, config.max_request_bytes))
        _check_model(body.model, config.model_name)
        top_logprobs = _refusal_to_400(body.requested_logprobs)
        params = _refusal_to_400(lambda: body.sampling_params(body.requested_max_tokens() or 1, top_logprobs))
        if state.chat_template is None:
            raise HTTPError(400, state.chat_template_error, param="messages")
        template = state.chat_template
        processed = await state.map_off_loop(lambda llm: llm.process(chat_prompt(
            llm, body.messages, chat_template=template, media=config.media, tokenizer=llm.tokenizer,
            add_generation_prompt=body.add_generation_prompt, continue_final_message=body.continue_final_message)))
        params = _with_max_tokens(params, body.requested_max_tokens(), processed, engine.max_model_len, "messages")
        stream = await state.open(processed, params)
        response_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            events = _chat_events(stream, response_id, created, config.model_name, top_logprobs, include_usage)
            return StreamingResponse(events, media_type="text/event-stream")
        async with stream:
            output = await _unless_disconnected(request, stream.last())
        _raise_if_failed(output)
        return responses.chat_completion(response_id, created, config.model_name, output, top_logprobs)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        body = _parse(CompletionRequest, await _read_json(request, config.max_request_bytes))
        _check_model(body.model, config.model_name)
        if body.logprobs is not None and not 0 <= body.logprobs <= 20:
            raise HTTPError(400, f"logprobs={body.logprobs}: must be in [0, 20]", param="logprobs")
        params = _refusal_to_400(lambda: body.sampling_params(body.max_tokens or 1, body.logprobs))
        prompts = _refusal_to_400(body.prompts)
        processed = await asyncio.gather(*(state.map_off_loop(lambda llm, p=p: llm.process(
            p if isinstance(p, str) else {"prompt_token_ids": p})) for p in prompts))
        streams: list[OutputStream] = []
        try:
            for p in processed:
                streams.append(await state.open(p, _with_max_tokens(params, body.max_tokens, p,
                                                                    engine.max_model_len, "prompt")))
        except BaseException:
            for s in streams:
                s.close()
            raise
        response_id, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            events = _completion_events(streams, response_id, created, config.model_name, body.logprobs,
                                        include_usage)
            return StreamingResponse(events, media_type="text/event-stream")
        try:
            outputs = await _unless_disconnected(request, asyncio.gather(*(s.last() for s in streams)))
        finally:
            for s in streams:
                s.close()
        for output in outputs:
            _raise_if_failed(output)
        return responses.completion(response_id, created, config.model_name, outputs, body.logprobs)

    return app


# -- request bodies -----------------------------------------------------------------------


async def _read_json(request: Request, limit: int) -> Any:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise HTTPError(413, f"the request body is {declared} bytes; the server takes at most {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPError(413, f"the request body is larger than the {limit} bytes the server takes")
        chunks.append(chunk)
    try:
        return json.loads(b"".join(chunks))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise HTTPError(400, f"the request body is not valid JSON: {err}") from err


def _parse(model: type[BaseModel], body: Any) -> Any:
    if not isinstance(body, dict):
        raise HTTPError(400, f"the request body must be a JSON object, got {type(body).__name__}")
    try:
        return model.model_validate(body)
    except ValidationError as err:
        message, param = describe_validation_error(err)
        raise HTTPError(400, message, param=param) from err


def _refusal_to_400(make: Callable[[], Any]) -> Any:
    try:
        return make()
    except RequestRefused as err:
        raise bad_request(err) from err


def _check_model(requested: str | None, served: str) -> None:
    if requested is not None and requested != served:
        raise HTTPError(404, f"the model {requested!r} does not exist; this server serves {served!r}",
                        kind="not_found_error", param="model", code="model_not_found")


def _with_max_tokens(params: SamplingParams, requested: int | None, processed: ProcessedPrompt,
                     max_model_len: int, what: str) -> SamplingParams:
    """``params`` with ``max_tokens`` resolved: the request's, else what the context leaves."""
    length = len(processed.token_ids)
    room = max_model_len - length
    if room <= 0:
        raise HTTPError(400, f"the {what} hold {length} tokens (image placeholders included); this model's "
                        f"maximum context length is {max_model_len} tokens, which leaves no room to generate",
                        param=what)
    if requested is not None and requested > room:
        raise HTTPError(400, f"this model's maximum context length is {max_model_len} tokens; the {what} hold "
                        f"{length} (image placeholders included) and max_tokens asks for {requested} more",
                        param="max_tokens")
    return dataclasses.replace(params, max_tokens=requested if requested is not None else room)


def _raise_if_failed(output: RequestOutput) -> None:
    if output.error is not None:
        raise HTTPError(500, f"the request failed while it ran: {output.error}", kind="server_error")


async def _unless_disconnected(request: Request, work: Awaitable[Any]) -> Any:
    """Await ``work``; should the client hang up first, cancel it (its streams then abort)."""
    task = asyncio.ensure_future(work)
    hang_up = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, hang_up}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        hang_up.cancel()
        if not task.done():
            task.cancel()
    if not task.done() or task.cancelled():
        raise HTTPError(499, "the client closed the connection", kind="client_closed")
    return task.result()


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


# -- server-sent events -------------------------------------------------------------------


def _sse(payload: Any) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


_DONE = "data: [DONE]\n\n"


async def _chat_events(stream: OutputStream, response_id: str, created: int, model: str,
                       top_logprobs: int | None, include_usage: bool) -> AsyncIterator[str]:
    """``chat.completion.chunk`` events: the role, the text as it grows, the finish reason, usage, [DONE]."""
    async with stream:
        yield _sse(responses.chat_chunk(response_id, created, model, {"role": "assistant", "content": ""}))
        sent_text = sent_tokens = 0
        output = None
        async for output in stream:
            if output.error is not None:
                yield _sse(responses.error_body(f"the request failed while it ran: {output.error}", "server_error"))
                break
            text = output.text[sent_text:]
            logprobs = None if top_logprobs is None else responses.chat_logprobs(output, sent_tokens, top_logprobs)
            if text or (logprobs and logprobs["content"]):
                yield _sse(responses.chat_chunk(response_id, created, model, {"content": text}, logprobs=logprobs))
            sent_text, sent_tokens = len(output.text), len(output.token_ids)
            if output.finished:
                yield _sse(responses.chat_chunk(response_id, created, model, {},
                                                finish=responses.finish_reason(output)))
        if include_usage and output is not None:
            yield _sse(responses.usage_chunk(response_id, created, model, "chat.completion.chunk", [output]))
    yield _DONE


async def _completion_events(streams: list[OutputStream], response_id: str, created: int, model: str,
                             logprobs: int | None, include_usage: bool) -> AsyncIterator[str]:
    """``text_completion`` events of every prompt of the request, as each grows, then usage and [DONE]."""
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
            if output.error is not None:
                yield _sse(responses.error_body(f"the request failed while it ran: {output.error}", "server_error"))
                break
            text_sent, tokens_sent = sent[index]
            text = output.text[text_sent:]
            lp = None if logprobs is None else responses.completion_logprobs(output, tokens_sent, logprobs, text_sent)
            finish = responses.finish_reason(output) if output.finished else None
            if text or finish or (lp and lp["tokens"]):
                yield _sse(responses.completion_chunk(response_id, created, model, index, text, finish=finish,
                                                      logprobs=lp))
            sent[index] = (len(output.text), len(output.token_ids))
            if output.finished:
                finals[index] = output
        if include_usage and len(finals) == len(streams):
            yield _sse(responses.usage_chunk(response_id, created, model, "text_completion",
                                             [finals[i] for i in range(len(streams))]))
    finally:
        for task in tasks:
            task.cancel()
        for stream in streams:
            stream.close()
    yield _DONE
