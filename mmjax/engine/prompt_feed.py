"""Prompts read from any iterable only as the engine has room for them, mapped ahead on workers.

``PromptFeed`` is what lets ``generate`` run over a data set in bounded memory: it reads a
prompt (and its sampling parameters) only when fewer than ``lookahead`` read prompts wait to
enter the engine, starts its mapping on a ``PromptMapper`` at once, and hands the mapped
prompts to the engine in the order they were read. Which prompt enters the engine when
depends only on counts, never on how fast a worker was, so every process of a multi-host
run admits the same requests before the same step.
"""

from __future__ import annotations

import collections
import concurrent.futures
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from mmjax.engine.errors import PromptError
from mmjax.engine.prompt_mapper import PromptMapper
from mmjax.engine.request import Request
from mmjax.engine.sampling_params import SamplingParams
from mmjax.registry import ProcessedPrompt

#: The errors that mean "this prompt is invalid" (anything else is a fault and propagates).
PROMPT_ERRORS = (TypeError, ValueError, KeyError, FileNotFoundError)


class PromptFeed:
    """Reads ``prompts`` lazily and in order, maps up to ``lookahead`` ahead, admits them to ``engine``.

    ``map_prompt(llm, prompt)`` makes a prompt's ``ProcessedPrompt`` (``llm.process`` for
    ``generate``); it runs on the mapper's workers.

    Attributes:
      wait_s: seconds the caller's thread spent waiting for mapped prompts (blocked on a worker,
        or mapping inline): the time the device waited for input.
      num_read: prompts read from the iterable so far.
    """

    def __init__(self, engine: Any, prompts: Iterable[Any], params: SamplingParams | Iterable[SamplingParams],
                 mapper: PromptMapper, map_prompt: Callable[[Any, Any], ProcessedPrompt], lookahead: int):
        self.engine, self.mapper, self.map_prompt, self.lookahead = engine, mapper, map_prompt, lookahead
        self._prompts: Iterator[Any] = iter(prompts)
        self._params = params if isinstance(params, SamplingParams) else iter(params)
        self._pending: collections.deque[tuple[int, Any, concurrent.futures.Future]] = collections.deque()
        self._exhausted = False
        self.num_read = 0
        self.wait_s = 0.0

    def has_more(self) -> bool:
        self._read_ahead()
        return bool(self._pending)

    def admit(self) -> tuple[int, Request]:
        """Queue the next prompt in the engine (waiting for its mapping if need be); ``(index, request)``.

        Raises:
          PromptError: the prompt was refused (its mapping or the engine's checks raised one of
            ``PROMPT_ERRORS``), or reading it from the iterable raised; ``index`` says which.
          ValueError: the per-prompt sampling parameters ran out before the prompts did.
        """
        self._read_ahead()
        index, params, future = self._pending.popleft()
        start = time.perf_counter()
        try:
            processed = future.result()
        except PromptError:
            raise
        except PROMPT_ERRORS as error:
            raise PromptError(index, error) from error
        finally:
            self.wait_s += time.perf_counter() - start
        if isinstance(params, BaseException):
            raise params
        try:
            request = self.engine.add_processed(processed, params)
        except PROMPT_ERRORS as error:
            raise PromptError(index, error) from error
        return index, request

    def _read_ahead(self) -> None:
        while not self._exhausted and len(self._pending) < self.lookahead:
            self._read_one()

    def _read_one(self) -> None:
        index = self.num_read
        try:
            prompt = next(self._prompts)
        except StopIteration:
            self._exhausted = True
            return
        except Exception as error:  # noqa: BLE001  (the user's iterable: reported as that prompt's error)
            self._exhausted = True
            self._pending.append((index, None, _failed(PromptError(index, error, "reading it from the prompts "
                                                                          "iterable raised"))))
            return
        self.num_read += 1
        params = self._next_params(index)
        start = time.perf_counter()
        future = self.mapper.submit(lambda llm: self._mapped(llm, prompt, params))
        self.wait_s += time.perf_counter() - start  # the whole mapping when inline; ~0 on a worker
        self._pending.append((index, params, future))

    def _mapped(self, llm: Any, prompt: Any, params: SamplingParams | BaseException) -> ProcessedPrompt:
        """The prompt mapped, and its structured-output constraint compiled (cached: ``add_processed`` then
        finds it), both on the mapper's worker, off the thread that runs the steps."""
        processed = self.map_prompt(llm, prompt)
        if isinstance(params, SamplingParams) and params.structured_outputs is not None:
            self.engine.check_structured_outputs(params)
        return processed

    def _next_params(self, index: int) -> SamplingParams | BaseException:
        if isinstance(self._params, SamplingParams):
            return self._params
        try:
            return next(self._params)
        except StopIteration:
            self._exhausted = True
            return ValueError(f"the sampling params ran out at prompt {index}; give one for all prompts, "
                              f"or one per prompt")

    def close(self) -> None:
        """Drop the prompts read but not admitted; their mappings not yet started are cancelled."""
        for _, _, future in self._pending:
            future.cancel()
        self._pending.clear()
        self._exhausted = True


def _failed(error: Exception) -> concurrent.futures.Future:
    future: concurrent.futures.Future = concurrent.futures.Future()
    future.set_exception(error)
    return future
