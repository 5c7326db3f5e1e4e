"""``mmjax.generate``: a batch of prompts with images in, one output per prompt out."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from mmjax.engine.config import EngineConfig
from mmjax.engine.errors import PromptError, StepError
from mmjax.engine.outputs import CompletionOutput, RequestOutput
from mmjax.engine.request import Request
from mmjax.engine.sampling_params import SamplingParams
from mmjax.registry import PromptInputs


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
    llm: Any,
    prompts: PromptInputs | Sequence[PromptInputs],
    sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
    *,
    stream: bool = False,
    use_tqdm: bool = True,
    engine_config: EngineConfig | None = None,
    errors: str = "raise",
) -> list[RequestOutput] | Iterator[RequestOutput]:
    """Generate a completion for each prompt, with continuous batching over a paged KV cache.

    Args:
      llm: a model from ``mmjax.load``.
      prompts: one prompt or a list: a string, ``{"prompt": str, "multi_modal_data": {...},
        "mm_processor_kwargs": {...}}`` or ``{"prompt_token_ids": [...], ...}``.
      sampling_params: one for all prompts, or one per prompt (default: ``SamplingParams()``).
      stream: yield a ``RequestOutput`` each time a request gets new tokens, instead
        of returning the finished list.
      use_tqdm: show a progress bar over prompts (only for batches, and not when streaming).
      engine_config: batching and KV-cache settings (default: ``EngineConfig()``);
        the engine is built once per config and kept on ``llm``.
      errors: "raise" (default): a bad prompt raises ``PromptError`` before any
        work, and a request that fails while it runs raises ``StepError``; "return":
        each bad or failed prompt gets an output with ``.error`` set and
        ``finish_reason == "error"``, and the other prompts run normally.

    Returns:
      One ``RequestOutput`` per prompt, in order (``.text``, ``.token_ids``,
      ``.finish_reason``, ``.logprobs``, ``.prompt_logprobs``).

    Raises:
      PromptError: a prompt or its parameters are invalid; raised before any
        work starts, and no request of the call is left in the engine.
      StepError: with ``errors="raise"``, a request failed while it ran (its
        encoder, a step, sampling or detokenizing raised); the call's other
        requests are aborted, and the engine is left as a fresh one would be.
      KeyboardInterrupt: passed on after the call's requests are aborted.
    """
    if errors not in ("raise", "return"):
        raise ValueError(f"errors must be 'raise' or 'return', got {errors!r}")
    prompts = _as_list(prompts)
    params = _params_for(sampling_params, len(prompts))
    engine = llm.engine(engine_config)
    requests = _add_all(engine, prompts, params, keep_going=errors == "return")
    live = [r for r in requests if isinstance(r, Request)]
    keep_going = errors == "return"
    if stream:
        return _stream(engine, live, keep_going)
    _run(engine, live, progress=use_tqdm and len(live) > 1, keep_going=keep_going)
    return [to_output(r) if isinstance(r, Request) else r for r in requests]


def _as_list(prompts: Any) -> list[PromptInputs]:
    if isinstance(prompts, (str, dict)):
        return [prompts]
    if not isinstance(prompts, Sequence) or not prompts:
        raise TypeError(f"prompts must be a prompt or a non-empty list of prompts, got {prompts!r:.80}")
    return list(prompts)


def _params_for(sampling_params: Any, count: int) -> list[SamplingParams]:
    if sampling_params is None or isinstance(sampling_params, SamplingParams):
        return [sampling_params or SamplingParams()] * count
    params = list(sampling_params)
    if len(params) != count:
        raise ValueError(f"got {len(params)} sampling params for {count} prompts; give one, or one per prompt")
    return params


def _add_all(engine: Any, prompts: list[PromptInputs], params: list[SamplingParams],
             keep_going: bool) -> list[Request | RequestOutput]:
    """Queue every prompt; a refused one raises (after unqueueing the others) or becomes an error output."""
    requests: list[Request | RequestOutput] = []
    for index, (prompt, p) in enumerate(zip(prompts, params)):
        try:
            requests.append(engine.add_request(prompt, p))
        except (TypeError, ValueError, KeyError, FileNotFoundError) as error:
            if keep_going:
                requests.append(error_output(index, PromptError(index, error)))
                continue
            for request in requests:  # leave the engine as it was
                engine.abort(request)
            raise PromptError(index, error) from error
    return requests


def error_output(index: int, error: PromptError) -> RequestOutput:
    """The output of a prompt refused before it ran: no tokens, ``finish_reason == "error"``."""
    completion = CompletionOutput(index=0, text="", token_ids=(), cumulative_logprob=None, logprobs=None,
                                  finish_reason="error")
    return RequestOutput(request_id=f"refused-{index}", prompt=None, prompt_token_ids=(), prompt_logprobs=None,
                         outputs=[completion], finished=True, error=str(error))


def _step(engine: Any, requests: list[Request], keep_going: bool) -> list[Request]:
    """One engine step for a call's ``requests``; on a failure (or Ctrl-C) the call's other requests
    are aborted unless ``keep_going`` (a failed request is then finished with its error)."""
    try:
        return engine.step()
    except StepError as error:
        if keep_going:
            return list(error.requests)
        _abort(engine, requests)
        raise
    except BaseException:
        _abort(engine, requests)
        raise


def _abort(engine: Any, requests: list[Request]) -> None:
    for request in requests:
        if not request.finished:
            engine.abort(request)


def _run(engine: Any, requests: list[Request], progress: bool, keep_going: bool) -> None:
    from tqdm.auto import tqdm

    bar = tqdm(total=len(requests), desc="generate", unit="prompt", disable=not progress)
    done = 0
    while not all(r.finished for r in requests):
        _step(engine, requests, keep_going)
        finished = sum(r.finished for r in requests)
        bar.update(finished - done)
        done = finished
    bar.close()


def _stream(engine: Any, requests: list[Request], keep_going: bool) -> Iterator[RequestOutput]:
    mine = set(map(id, requests))
    try:
        while not all(r.finished for r in requests):
            for request in _step(engine, requests, keep_going):
                if id(request) in mine:
                    yield to_output(request)
    finally:  # the consumer stopped early (or failed): nothing of this call stays in the engine
        _abort(engine, requests)
