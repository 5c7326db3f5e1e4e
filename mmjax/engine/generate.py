"""``mmjax.generate``: prompts with images in (a list, or a data set of any length), one output per
prompt out."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sized
from typing import Any, TypeVar

from mmjax.engine.config import EngineConfig
from mmjax.engine.errors import PromptError, StepError
from mmjax.engine.outputs import CompletionOutput, RequestOutput
from mmjax.engine.progress import GenerateProgress
from mmjax.engine.prompt_feed import PromptFeed
from mmjax.engine.prompt_mapper import check_mapping_threads
from mmjax.engine.request import Request
from mmjax.engine.sampling_params import SamplingParams
from mmjax.registry import ProcessedPrompt, PromptInputs
from mmjax.engine.loaded_model import LoadedModel

T = TypeVar("T")


def to_output(request: Request) -> RequestOutput:
    """A frozen snapshot of a request's state."""
    completion = CompletionOutput(
        index=0, text=request.detokenizer.output_text, token_ids=tuple(request.output_token_ids),
        cumulative_logprob=request.cumulative_logprob,
        logprobs=None if request.logprobs is None else list(request.logprobs),
        finish_reason=request.finish_reason, stop_reason=request.stop_reason,
    )
    return RequestOutput(
        request_id=request.request_id, prompt=request.processed.prompt,
        prompt_token_ids=tuple(int(t) for t in request.prompt_token_ids),
        prompt_logprobs=None if request.prompt_logprobs is None else list(request.prompt_logprobs),
        outputs=[completion], finished=request.finished, error=request.error,
    )


def generate(
    llm: LoadedModel,
    prompts: PromptInputs | Iterable[PromptInputs],
    sampling_params: SamplingParams | Iterable[SamplingParams] | None = None,
    *,
    stream: bool = False,
    as_completed: bool = False,
    use_tqdm: bool = True,
    engine_config: EngineConfig | None = None,
    errors: str = "raise",
    mapping_threads: int | None = None,
) -> list[RequestOutput] | Iterator[RequestOutput] | Iterator[tuple[int, RequestOutput]]:
    """Generate a completion for each prompt, with continuous batching over a paged KV cache.

    Prompts are read and mapped (images decoded, resized, normalised, tiled; text tokenised)
    only as the engine has room for them, on worker threads while the device runs steps, so a
    generator or a lazily-loading data set of any length runs in memory bounded by the engine's
    size: at most ``2 * max_num_seqs`` prompts (per data-parallel replica) are held at once.

    Args:
      llm: a model from ``mmjax.load``.
      prompts: one prompt, or any iterable of them (a list, a generator, a data set): a string,
        ``{"prompt": str, "multi_modal_data": {...}, "mm_processor_kwargs": {...}}`` or
        ``{"prompt_token_ids": [...], ...}``.
      sampling_params: one for all prompts, or one per prompt: a sequence as long as the
        prompts, or an iterable read alongside them (default: ``SamplingParams()``).
      stream: yield a ``RequestOutput`` each time a request gets new tokens, instead
        of returning the finished list.
      as_completed: yield ``(index, RequestOutput)`` as each prompt finishes (in finishing
        order), so that a long run's results can be written out as they come.
      use_tqdm: show a progress bar (prompts done of the total, output tokens/s, the share of
        time the device waited for input); not when streaming, nor for one prompt.
      engine_config: batching and KV-cache settings (default: ``EngineConfig()``);
        the engine is built once per config and kept on ``llm``.
      errors: "raise" (default): a bad prompt raises ``PromptError``, and a request that fails
        while it runs raises ``StepError``; the call's other requests are then aborted.
        "return": each bad or failed prompt gets an output with ``.error`` set and
        ``finish_reason == "error"``, and the other prompts run normally.
      mapping_threads: worker threads mapping prompts (default: the host's cores, at most 4;
        0: map on the calling thread, between steps).

    Returns:
      One ``RequestOutput`` per prompt, in order (``.text``, ``.token_ids``,
      ``.finish_reason``, ``.logprobs``, ``.prompt_logprobs``); an iterator with
      ``stream`` or ``as_completed``.

    Raises:
      PromptError: a prompt or its parameters are invalid, or the prompts iterable raised
        (``index``: the prompt it had reached). The first ``max_num_seqs`` prompts (per replica)
        are all mapped before the first step, so in a call of that size it is raised before any
        work; later, when the bad prompt is reached. No request of the call is left in the engine.
      StepError: with ``errors="raise"``, a request failed while it ran (its
        encoder, a step, sampling or detokenizing raised); the call's other
        requests are aborted, and the engine is left as a fresh one would be.
      KeyboardInterrupt: passed on after the call's requests are aborted.
    """
    return generate_mapped(llm, _as_iterable(prompts), sampling_params, map_prompt=_process, stream=stream,
                           as_completed=as_completed, use_tqdm=use_tqdm, engine_config=engine_config, errors=errors,
                           mapping_threads=mapping_threads)


def generate_mapped(
    llm: LoadedModel,
    items: Iterable[T],
    sampling_params: SamplingParams | Iterable[SamplingParams] | None,
    map_prompt: Callable[[Any, T], ProcessedPrompt],
    *,
    stream: bool = False,
    as_completed: bool = False,
    use_tqdm: bool = True,
    engine_config: EngineConfig | None = None,
    errors: str = "raise",
    mapping_threads: int | None = None,
) -> list[RequestOutput] | Iterator[RequestOutput] | Iterator[tuple[int, RequestOutput]]:
    """``generate`` over items that ``map_prompt(llm, item)`` turns into prompts on the mapping workers
    (``llm`` there is the worker's handle, with its own tokenizer); e.g. ``mmjax.chat``'s conversations,
    rendered and their images loaded off the step loop. The options are ``generate``'s."""
    if errors not in ("raise", "return"):
        raise ValueError(f"errors must be 'raise' or 'return', got {errors!r}")
    if stream and as_completed:
        raise ValueError("stream=True and as_completed=True are exclusive: stream yields every new token, "
                         "as_completed each finished prompt")
    check_mapping_threads(mapping_threads)
    total = len(items) if isinstance(items, Sized) else None
    params = _params_for(sampling_params, total)
    mapper = llm.prompt_mapper(0 if total == 1 else mapping_threads)
    engine = llm.engine(engine_config)
    room = engine.config.max_num_seqs * engine.num_replicas
    feed = PromptFeed(engine, items, params, mapper, map_prompt, lookahead=room)
    events = _run(engine, feed, room, keep_going=errors == "return")
    if stream:
        return _streamed(events)
    finished = _finished(events, feed, total, enabled=use_tqdm and total != 1)
    if as_completed:
        return finished
    outputs = dict(finished)
    return [outputs[index] for index in range(len(outputs))]


def _process(llm: LoadedModel, prompt: PromptInputs) -> ProcessedPrompt:
    return llm.process(prompt)


def _as_iterable(prompts: Any) -> Iterable[PromptInputs]:
    if isinstance(prompts, (str, dict)):
        return [prompts]
    if isinstance(prompts, (bytes, bytearray)) or not isinstance(prompts, Iterable):
        raise TypeError(f"prompts must be a prompt or an iterable of prompts, got {prompts!r:.80}")
    return prompts


def _params_for(sampling_params: Any, total: int | None) -> SamplingParams | Iterable[SamplingParams]:
    if sampling_params is None or isinstance(sampling_params, SamplingParams):
        return sampling_params or SamplingParams()
    if not isinstance(sampling_params, Iterable):
        raise TypeError(f"sampling_params must be a SamplingParams or one per prompt, got {sampling_params!r:.80}")
    if total is not None and isinstance(sampling_params, Sized) and len(sampling_params) != total:
        raise ValueError(f"got {len(sampling_params)} sampling params for {total} prompts; give one, "
                         f"or one per prompt")
    return sampling_params


def error_output(index: int, error: PromptError) -> RequestOutput:
    """The output of a prompt refused before it ran: no tokens, ``finish_reason == "error"``."""
    completion = CompletionOutput(index=0, text="", token_ids=(), cumulative_logprob=None, logprobs=None,
                                  finish_reason="error")
    return RequestOutput(request_id=f"refused-{index}", prompt=None, prompt_token_ids=(), prompt_logprobs=None,
                         outputs=[completion], finished=True, error=str(error))


def _step(engine: Any, keep_going: bool) -> list[Request]:
    """One engine step; a failed request is finished with its error and, with ``keep_going``, returned
    as updated (else ``StepError`` propagates, and the caller aborts the call's other requests)."""
    try:
        return engine.step()
    except StepError as error:
        if keep_going:
            return list(error.requests)
        raise


def _abort(engine: Any, requests: list[Request]) -> None:
    for request in requests:
        if not request.finished:
            engine.abort(request)


def _run(engine: Any, feed: PromptFeed, room: int, keep_going: bool) -> Iterator[tuple[int, Request | RequestOutput]]:
    """Step the engine over the feed's prompts, keeping ``room`` of them in it: yields ``(index,
    request)`` for each request that got tokens or finished in a step, and ``(index, output)``
    for a refused prompt. Whatever ends the run, nothing of the call stays in the engine."""
    live: dict[int, tuple[int, Request]] = {}  # id(request) -> (its prompt's index, the request)
    try:
        while True:
            while len(live) < room and feed.has_more():
                try:
                    index, request = feed.admit()
                except PromptError as error:
                    if not keep_going:
                        raise
                    yield error.index, error_output(error.index, error)
                    continue
                live[id(request)] = (index, request)
            if not live:
                return
            updated = set(map(id, _step(engine, keep_going)))
            for key, (index, request) in list(live.items()):
                if key in updated or request.finished:
                    if request.finished:
                        del live[key]
                    yield index, request
    finally:  # done, failed, interrupted, or the consumer stopped early
        feed.close()
        _abort(engine, [r for _, r in live.values()])
        engine.stats["input_wait_s"] += feed.wait_s


def _output_of(item: Request | RequestOutput) -> RequestOutput:
    return to_output(item) if isinstance(item, Request) else item


def _streamed(events: Iterator[tuple[int, Request | RequestOutput]]) -> Iterator[RequestOutput]:
    try:
        for _, item in events:
            yield _output_of(item)
    finally:
        events.close()


def _finished(events: Iterator[tuple[int, Request | RequestOutput]], feed: PromptFeed, total: int | None,
              enabled: bool) -> Iterator[tuple[int, RequestOutput]]:
    """``(index, output)`` of each prompt as it finishes, counted on the progress bar."""
    progress = GenerateProgress(total, feed, enabled)
    try:
        for index, item in events:
            if isinstance(item, RequestOutput) or item.finished:
                output = _output_of(item)
                progress.finished(len(output.outputs[0].token_ids))
                yield index, output
    finally:
        events.close()
        progress.close()
