"""The OpenAI-compatible HTTP API (FastAPI): ``/v1/chat/completions``, ``/v1/completions``, ``/v1/models``,
``/health``, ``/metrics``.

A request is admitted (503 beyond the server's capacity), read and checked field by field (400
naming the field), its output constraint (``response_format``, ``structured_outputs``) compiled, its
images loaded and its prompt mapped on a worker thread (never on the thread that runs the steps),
then handed to the ``EngineLoop``, which adds it to the running batch at the next step. Every
refusal is an HTTP 4xx with OpenAI's error JSON, sent before any engine work; whatever one request
does, the others keep being served. No answer holds the server's insides: see ``mmjax.serving.errors``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import jinja2
from fastapi import FastAPI, Request
from fastapi.responses import Response
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from mmjax.engine.prompt_feed import PROMPT_ERRORS
from mmjax.engine.sampling_params import SamplingParams
from mmjax.registry import ProcessedPrompt
from mmjax.serving import responses
from mmjax.serving.admission import Admission, Ticket
from mmjax.serving.body import ClientGone, read_json
from mmjax.serving.chat import chat_prompt, chat_template_of
from mmjax.serving.engine_loop import EngineLoop, EngineStopped, OutputStream
from mmjax.serving.errors import AsciiJSONResponse, HTTPError, Scrubber, error_response
from mmjax.serving.events import EventStream, chat_events, completion_events, raise_if_failed
from mmjax.serving.media_limits import MediaBusy, MediaLimits
from mmjax.serving.metrics import CONTENT_TYPE, ServerMetrics
from mmjax.serving.middleware import RequestContext
from mmjax.serving.openapi import publish_request_schemas
from mmjax.serving.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    RequestRefused,
    describe_validation_error,
)
from mmjax.engine.loaded_model import LoadedModel
from mmjax.serving.request_limits import lowered_media

log = logging.getLogger("mmjax.serving")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ServerConfig:
    """How the server treats requests (the engine's own settings are its ``EngineConfig``).

    Attributes:
      model_name: the name clients pass as ``model`` (and ``/v1/models`` lists).
      chat_template: Jinja text or a file to use instead of the checkpoint's template.
      media: limits on image URLs: what may be fetched, from where, within what time and size.
      max_request_bytes: most bytes of one request body (HTTP 413 beyond).
      mapping_threads: worker threads that load images and map prompts while the engine steps
        (default: the host's cores, at most 4; at least 1, so that the event loop never maps).
      shutdown_drain_s: on shutdown, seconds in-flight requests may take to finish before they
        are aborted.
      max_num_queued_requests: most requests admitted beyond those the engine runs at once
        (``max_num_seqs`` per replica); past it, HTTP 503 with ``Retry-After``.
      api_key: when set, ``/v1/`` routes need ``Authorization: Bearer <api_key>``.
    """

    model_name: str
    chat_template: str | None = None
    media: MediaLimits = MediaLimits()
    max_request_bytes: int = 32 * 2**20
    mapping_threads: int | None = None
    shutdown_drain_s: float = 30.0
    max_num_queued_requests: int = 256
    api_key: str | None = None

    def __post_init__(self):
        if self.mapping_threads is not None and (not isinstance(self.mapping_threads, int)
                                                 or self.mapping_threads < 1):
            raise ValueError(f"mapping_threads must be an int >= 1 (the server maps prompts off its event "
                             f"loop), got {self.mapping_threads!r}")
        if isinstance(self.max_num_queued_requests, bool) or not isinstance(self.max_num_queued_requests, int) \
                or self.max_num_queued_requests < 0:
            raise ValueError(f"max_num_queued_requests must be an int >= 0, got {self.max_num_queued_requests!r}")
        if self.api_key is not None and not self.api_key:
            raise ValueError("api_key must be a non-empty string (or None for no key)")


def bad_request(error: Exception, scrub: Callable[[str], str]) -> HTTPError:
    return HTTPError(400, scrub(str(error)), param=getattr(error, "param", None))


class ServingState:
    """What the routes share: the model, the engine loop, the chat template, the mapping threads,
    admission, metrics."""

    def __init__(self, llm: LoadedModel, engine: Any, config: ServerConfig):
        self.llm, self.engine, self.config = llm, engine, config
        self.loop = EngineLoop(engine)
        self.created = int(time.time())
        self.scrub = Scrubber([llm.model_config.model, config.media.allowed_local_media_path,
                               config.chat_template if config.chat_template and len(config.chat_template) < 4096
                               and "\n" not in config.chat_template else None])
        try:
            self.chat_template: str | None = chat_template_of(llm, config.chat_template)
            self.chat_template_error = ""
        except ValueError as err:  # no template: completions still work, chat requests hear why
            if config.chat_template is not None:
                raise
            self.chat_template, self.chat_template_error = None, self.scrub(str(err))
        self.mapper = llm.prompt_mapper(config.mapping_threads)
        self.admission = Admission(engine.config.max_num_seqs * engine.num_replicas + config.max_num_queued_requests)
        self.metrics = ServerMetrics(engine, self.admission)
        self.vocab_size = llm.model_config.vocab_size

    async def map_off_loop(self, work: Callable[[Any], ProcessedPrompt], param: str) -> ProcessedPrompt:
        """Run ``work(llm)`` on a mapping thread (with its own tokenizer); a refusal there becomes HTTP 400
        naming ``param`` (503 when the image fetches are at their cap)."""
        try:
            return await asyncio.wrap_future(self.mapper.submit(work))
        except MediaBusy as err:
            raise HTTPError(503, str(err), kind="service_unavailable", code="server_busy", retry_after=1) from err
        except (*PROMPT_ERRORS, jinja2.TemplateError) as err:
            raise HTTPError(400, self.scrub(str(err)), param=getattr(err, "param", None) or param) from err

    async def check_constraint(self, params: SamplingParams, body: ChatCompletionRequest | CompletionRequest) -> None:
        """Compile the output constraint of ``params`` (if any) on a mapping thread, never on the engine loop's,
        so that a slow grammar stalls no step (the engine keeps it compiled for the request); one that does
        not compile is HTTP 400 naming the request's field (``body.constraint_refused``)."""
        if params.structured_outputs is None:
            return
        check = self.engine.check_structured_outputs
        try:
            await asyncio.wrap_future(self.mapper.submit(lambda _llm: check(params)))
        except (ValueError, TypeError) as err:
            raise bad_request(body.constraint_refused(err), self.scrub) from err

    async def open(self, processed: ProcessedPrompt, params: SamplingParams) -> OutputStream:
        try:
            return await self.loop.open(processed, params, f"req-{uuid.uuid4().hex}")
        except (ValueError, TypeError) as err:
            raise bad_request(err, self.scrub) from err
        except EngineStopped as err:
            raise HTTPError(503, str(err), kind="service_unavailable") from err

    def admit(self) -> Ticket:
        """One place among the requests in flight (``HTTPError`` 503 when there is none, counted)."""
        try:
            return self.admission.admit()
        except HTTPError:
            self.metrics.rejected.inc()
            raise

    def check_stop_token_ids(self, ids: list[int] | None) -> None:
        for i, token in enumerate(ids or ()):
            if self.vocab_size is not None and token >= self.vocab_size:
                raise HTTPError(400, f"stop_token_ids[{i}]={token}: must be in [0, {self.vocab_size}) (the "
                                "model's vocabulary)", param="stop_token_ids")

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
    app.add_middleware(RequestContext, api_key=config.api_key, metrics=state.metrics)
    _add_error_handlers(app, state)
    _add_info_routes(app, state)
    _add_generation_routes(app, state)
    publish_request_schemas(app, {"/v1/chat/completions": ChatCompletionRequest,
                                  "/v1/completions": CompletionRequest})
    return app


def _request_id(request: Request) -> str:
    return request.state.request_id


def _add_error_handlers(app: FastAPI, state: ServingState) -> None:
    @app.exception_handler(HTTPError)
    async def _http_error(request: Request, error: HTTPError) -> Response:
        message = str(error) if error.status >= 500 else state.scrub(str(error))
        if error.status in (499,):
            log.info("request %s: the client closed the connection", _request_id(request))
        return error_response(error.status, message, error.kind, _request_id(request), error.param, error.code,
                              error.retry_after)

    @app.exception_handler(StarletteHTTPException)
    async def _starlette_error(request: Request, error: StarletteHTTPException) -> Response:
        kind = "not_found_error" if error.status_code == 404 else "invalid_request_error"
        return error_response(error.status_code, state.scrub(str(error.detail)), kind, _request_id(request))

    @app.exception_handler(ClientGone)
    async def _client_gone(request: Request, error: ClientGone) -> Response:
        log.info("request %s: the client closed the connection before its request was read", _request_id(request))
        return Response(status_code=499)


def _add_info_routes(app: FastAPI, state: ServingState) -> None:
    @app.get("/health")
    async def health(request: Request) -> Response:
        if not state.loop.running:
            log.error("health check: the engine loop is down: %r", state.loop.error)
            return error_response(503, "the engine loop is down", "service_unavailable", _request_id(request))
        return AsciiJSONResponse({"status": "ok"})

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(state.metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [{
            "id": state.config.model_name, "object": "model", "created": state.created, "owned_by": "mmjax",
            "max_model_len": state.engine.max_model_len}]}


def _add_generation_routes(app: FastAPI, state: ServingState) -> None:
    @app.post("/v1/chat/completions", openapi_extra=_body_schema("ChatCompletionRequest"))
    async def chat_completions(request: Request) -> Any:
        ticket = state.admit()
        try:
            return await _chat(request, state, ticket)
        except BaseException:
            ticket.release()
            raise

    @app.post("/v1/completions", openapi_extra=_body_schema("CompletionRequest"))
    async def completions(request: Request) -> Any:
        ticket = state.admit()
        try:
            return await _complete(request, state, ticket)
        except BaseException:
            ticket.release()
            raise


async def _chat(request: Request, state: ServingState, ticket: Ticket) -> Any:
    config, engine, request_id = state.config, state.engine, _request_id(request)
    timer = state.metrics.track()  # time to first token counts from admission: reading, fetching, mapping too
    body = _parse(ChatCompletionRequest, await read_json(request, config.max_request_bytes))
    _check_model(body.model, config.model_name)
    top_logprobs = _refusal_to_400(body.requested_logprobs, state)
    params = _refusal_to_400(lambda: body.sampling_params(body.requested_max_tokens() or 1, top_logprobs), state)
    state.check_stop_token_ids(body.stop_token_ids)
    media = _refusal_to_400(lambda: lowered_media(config.media, body.mm_processor_kwargs), state)
    if state.chat_template is None:
        raise HTTPError(400, state.chat_template_error, param="messages")
    await state.check_constraint(params, body)
    template, salt = state.chat_template, body.cache_salt

    def mapped(llm: Any) -> ProcessedPrompt:
        prompt = chat_prompt(llm, body.messages, chat_template=template, media=media, tokenizer=llm.tokenizer,
                             add_generation_prompt=body.add_generation_prompt,
                             continue_final_message=body.continue_final_message)
        return llm.process(prompt if salt is None else {**prompt, "cache_salt": salt})

    processed = await state.map_off_loop(mapped, "messages")
    params = _with_max_tokens(params, body.requested_max_tokens(), processed, engine.max_model_len, "messages")
    stream = await state.open(processed, params)
    ids, created = (f"chatcmpl-{uuid.uuid4().hex}", request_id), int(time.time())
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        events = chat_events(stream, ids, created, config.model_name, top_logprobs, include_usage, timer.seen)
        return EventStream(events, on_close=lambda: (stream.close(), ticket.release()))
    try:
        async with stream:
            output = await _unless_disconnected(request, stream.last())
    finally:
        ticket.release()
    timer.seen(output)
    raise_if_failed(output, request_id)
    return responses.chat_completion(ids[0], created, config.model_name, output, top_logprobs)


async def _complete(request: Request, state: ServingState, ticket: Ticket) -> Any:
    config, engine, request_id = state.config, state.engine, _request_id(request)
    body = _parse(CompletionRequest, await read_json(request, config.max_request_bytes))
    _check_model(body.model, config.model_name)
    params = _refusal_to_400(lambda: body.sampling_params(body.max_tokens or 1, body.logprobs), state)
    state.check_stop_token_ids(body.stop_token_ids)
    _refusal_to_400(lambda: lowered_media(config.media, body.mm_processor_kwargs), state)
    prompts = _refusal_to_400(body.prompts, state)
    await state.check_constraint(params, body)
    ticket.grow(len(prompts) - 1)
    timers = [state.metrics.track() for _ in prompts]
    salt = {} if body.cache_salt is None else {"cache_salt": body.cache_salt}
    processed = await asyncio.gather(*(state.map_off_loop(lambda llm, p=p: llm.process(
        {"prompt": p, **salt} if isinstance(p, str) else {"prompt_token_ids": p, **salt}), "prompt")
        for p in prompts))
    streams: list[OutputStream] = []
    try:
        for p in processed:
            streams.append(await state.open(p, _with_max_tokens(params, body.max_tokens, p,
                                                                engine.max_model_len, "prompt")))
    except BaseException:
        for s in streams:
            s.close()
        raise
    ids, created = (f"cmpl-{uuid.uuid4().hex}", request_id), int(time.time())

    def close_all() -> None:
        for s in streams:
            s.close()
        ticket.release()

    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        events = completion_events(streams, ids, created, config.model_name, body.logprobs, include_usage,
                                   [t.seen for t in timers])
        return EventStream(events, on_close=close_all)
    try:
        outputs = await _unless_disconnected(request, asyncio.gather(*(s.last() for s in streams)))
    finally:
        close_all()
    for timer, output in zip(timers, outputs):
        timer.seen(output)
        raise_if_failed(output, request_id)
    return responses.completion(ids[0], created, config.model_name, outputs, body.logprobs)


# -- request bodies -----------------------------------------------------------------------


def _body_schema(name: str) -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": {"application/json": {
        "schema": {"$ref": f"#/components/schemas/{name}"}}}}}


def _parse(model: type[BaseModel], body: Any) -> Any:
    if not isinstance(body, dict):
        raise HTTPError(400, f"the request body must be a JSON object, got {type(body).__name__}")
    try:
        return model.model_validate(body)
    except ValidationError as err:
        message, param = describe_validation_error(err)
        raise HTTPError(400, message, param=param) from err


def _refusal_to_400(make: Callable[[], Any], state: ServingState) -> Any:
    try:
        return make()
    except RequestRefused as err:
        raise bad_request(err, state.scrub) from err


def _check_model(requested: str | None, served: str) -> None:
    if requested is not None and requested != served:
        raise HTTPError(404, f"the model {requested[:80]!r} does not exist; this server serves {served!r}",
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
