"""Prompt mapping (decode, resize, normalise, tile, tokenise) on worker threads, off the step loop.

The mapping of a prompt is pure host work: ``llm.process`` reads the prompt and returns a
``ProcessedPrompt``. A ``PromptMapper`` runs such work on a small pool of threads while the
caller's thread runs engine steps. Each worker uses its own copy of the tokenizer (a Hugging
Face fast tokenizer must not be used from two threads at once); the model itself is shared.

Threads, not processes: the heavy parts of mapping (PIL's resize and decode, numpy's
normalisation, the Rust tokenizer) release the GIL. ``benchmarks/large_batch.py`` measures
the pool against mapping inline on the stepping thread.
"""

from __future__ import annotations

import concurrent.futures
import copy
import dataclasses
import os
import threading
from collections.abc import Callable
from typing import Any, TypeVar
from mmjax.engine.loaded_model import LoadedModel

T = TypeVar("T")


def default_mapping_threads() -> int:
    """Worker threads for prompt mapping when none are asked for: the host's cores, at most 4."""
    return max(1, min(4, os.cpu_count() or 1))


def check_mapping_threads(num_threads: int | None) -> None:
    """Raises ValueError unless ``num_threads`` is None (the default) or an int >= 0."""
    if num_threads is not None and (not isinstance(num_threads, int) or isinstance(num_threads, bool)
                                    or num_threads < 0):
        raise ValueError(f"mapping_threads must be an int >= 0 (0: map on the calling thread), got {num_threads!r}")


class PromptMapper:
    """Runs ``work(llm)`` on ``num_threads`` workers, each seeing ``llm`` with its own tokenizer.

    With ``num_threads == 0`` the work runs inline, on the calling thread, when it is submitted
    (the future comes back done): the same results, with no overlap.
    """

    def __init__(self, llm: LoadedModel, num_threads: int):
        check_mapping_threads(num_threads)
        self.llm, self.num_threads = llm, num_threads
        self._local = threading.local()
        self._pool = (concurrent.futures.ThreadPoolExecutor(num_threads, thread_name_prefix="mmjax-map")
                      if num_threads else None)

    def submit(self, work: Callable[[Any], T]) -> concurrent.futures.Future[T]:
        """Start ``work`` on a worker (or run it now, inline); its result or error is the future's."""
        if self._pool is not None:
            return self._pool.submit(lambda: work(self._thread_llm()))
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        try:
            future.set_result(work(self.llm))
        except Exception as error:  # noqa: BLE001  (handed to whoever reads the future)
            future.set_exception(error)
        return future

    def _thread_llm(self) -> Any:
        """This worker's handle: the model shared, the tokenizer its own copy."""
        if not hasattr(self._local, "llm"):
            self._local.llm = dataclasses.replace(self.llm, tokenizer=copy.deepcopy(self.llm.tokenizer))
        return self._local.llm

    def close(self) -> None:
        """Stop the workers; work not started yet is cancelled."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
