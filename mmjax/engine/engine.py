"""``LLMEngine``: requests in, tokens out, one continuous-batching step at a time.

The engine is the host side: requests, scheduling, page and arena-row
allocation, detokenization, stats — plain Python. Everything on the device
(model state, KV pages, placeholder embeddings, the jitted encoder, step and
sampler) belongs to its ``ModelRunner`` (``engine.runner``), which it drives
through the runner's public methods. ``warmup()`` compiles every program ahead of time.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import time
from typing import Any

import jax
import numpy as np

from mmjax.engine.batch import build_step_batch
from mmjax.engine.compilation import enable_compilation_cache
from mmjax.engine.config import EngineConfig
from mmjax.engine.detokenizer import IncrementalDetokenizer
from mmjax.engine.embedding_rows import EmbeddingRows
from mmjax.engine.errors import StepError
from mmjax.engine.logprobs import record_prompt_logprobs, record_sample
from mmjax.engine.memory import plan_engine_memory
from mmjax.engine.request import Request, bidirectional_spans, item_spans, placeholder_rows
from mmjax.engine.runner import ModelRunner, StepOutput, model_text_config
from mmjax.engine.sampling_batch import SampledRow, SamplingBatch
from mmjax.engine.sampling_params import MAX_LOGPROBS, SamplingParams
from mmjax.engine.scheduler import ScheduledChunk, Scheduler
from mmjax.engine.shapes import StepShapes
from mmjax.engine.warmup import warm_up
from mmjax.engine.weights import checked_state, placed_like, set_state
from mmjax.kv_cache import PageAllocator
from mmjax.registry import InputContext, ProcessedPrompt, PromptInputs
from mmjax.sharding.multihost import agreed_seed
from mmjax.sharding.placement import Placement
from mmjax.structured.bitmask import all_allowed, mask_words
from mmjax.engine.loaded_model import LoadedModel


class LLMEngine:
    """Continuous batching over a paged KV cache for one loaded model (``mmjax.LLM``).

    Attributes:
      runner: the device side (``ModelRunner``): model state, KV pages, embeddings, programs.
      memory: how the KV cache was sized (``memory.describe()``).
      scheduler: the host-side queue and page allocators.
    """

    def __init__(self, llm: LoadedModel, config: EngineConfig | None = None):
        self.llm = llm
        self.config = config or EngineConfig()
        enable_compilation_cache()  # before the first program compiles (MMJAX_COMPILATION_CACHE=0: off)
        self.text_config, _ = model_text_config(llm.graphdef, llm.state)
        self.max_model_len = self._max_model_len()
        if self.config.batch_invariant and getattr(llm, "mesh", None) is not None:
            raise ValueError("EngineConfig.batch_invariant=True runs on one device: this model is sharded over a "
                             "mesh (load it without mesh= for a batch-invariant engine)")
        placement = Placement(getattr(llm, "mesh", None), self.text_config.num_kv_heads, llm.state)
        self.num_replicas = placement.num_replicas
        max_mm_tokens = llm.mm_registry.get_max_multimodal_tokens(llm.model_config)
        limits = llm.mm_registry.get_mm_limits_per_prompt(llm.model_config)
        max_items = sum(n for key, n in limits.items() if llm.mm_registry.takes_modality(llm.model_config, key))
        self.shapes = StepShapes.build(self.config, max_model_len=self.max_model_len, num_replicas=self.num_replicas,
                                       max_mm_tokens_per_prompt=max_mm_tokens, max_mm_items_per_prompt=max_items)
        self.pages_per_seq = self.shapes.pages_per_seq
        self.memory = plan_engine_memory(llm, self.config, self.shapes, placement)
        self.runner = ModelRunner(llm.graphdef, llm.state, shapes=self.shapes, placement=placement,
                                  num_pages=self.memory.num_pages, dtype=llm.dtype, impl=self.config.impl,
                                  batch_invariant=self.config.batch_invariant)
        self.allocators = [PageAllocator(self.memory.num_pages, self.config.page_size,
                                         enable_caching=self.config.enable_prefix_caching)
                           for _ in range(self.num_replicas)]
        self._check_budget_holds_a_span()
        self.embedding_rows = EmbeddingRows(self.shapes)
        self.scheduler = Scheduler(self.allocators, max_num_seqs=self.config.max_num_seqs,
                                   max_num_batched_tokens=self.config.max_num_batched_tokens)
        self._last_step_was_decode = True
        self._in_step: tuple[Request, ...] = ()  # the requests of the step running now
        self._blame: Request | None = None  # the one request a failure now would be caused by
        self._ids = itertools.count()
        # Seeds of requests without one: the same on every process of a multi-host run.
        self._seed_rng = np.random.default_rng(agreed_seed(int(np.random.SeedSequence().entropy % 2**31)))
        self.stats = {"steps": 0, "preemptions": 0, "prefill_tokens": 0, "decode_tokens": 0,
                      "prefill_step_s": 0.0, "decode_step_s": 0.0, "prefill_steps": 0, "decode_steps": 0,
                      "encoder_calls": 0, "encoded_items": 0, "input_wait_s": 0.0,
                      "tokens_per_replica": [0] * self.num_replicas}
        self.stats["caches"] = self.cache_stats()

    @functools.cached_property
    def bidirectional_token_id(self) -> int | None:
        """The token whose runs attend to each other (Gemma 3's image soft token); None for causal models."""
        return getattr(self.llm.model, "bidirectional_token_id", None)

    def _check_budget_holds_a_span(self) -> None:
        """A bidirectional span (an image whose tokens see each other) runs in one step: refuse a token budget
        shorter than the longest one the model's worst-case prompt (its dummy data) holds."""
        if self.bidirectional_token_id is None:
            return
        dummy = self.llm.input_registry.dummy_data_for_profiling(self.llm.model_config, seq_len=1,
                                                                 mm_registry=self.llm.mm_registry)
        longest = max((b - a for a, b in bidirectional_spans(dummy.prompt_token_ids, self.bidirectional_token_id)),
                      default=0)
        if longest > self.config.max_num_batched_tokens:
            raise ValueError(f"EngineConfig.max_num_batched_tokens ({self.config.max_num_batched_tokens}) is below "
                             f"the {longest} tokens of an image that attend to each other and must run in one "
                             f"step; raise it to at least {longest}")

    def _max_model_len(self) -> int:
        limit = self.config.max_model_len or self.llm.model_config.context_length
        if limit is None:
            raise ValueError("the model config states no context length: set EngineConfig.max_model_len")
        return int(limit)

    # -- requests -------------------------------------------------------------------

    def add_request(self, prompt: PromptInputs, params: SamplingParams | None = None,
                    request_id: str | None = None) -> Request:
        """Validate and queue one prompt. Raises (before any work) for a bad prompt or parameters."""
        self._check_params(params)
        return self.add_processed(self.llm.process(prompt), params, request_id)

    def add_processed(self, processed: ProcessedPrompt, params: SamplingParams | None = None,
                      request_id: str | None = None) -> Request:
        """Queue a prompt already mapped by ``llm.process`` (e.g. on another thread, off the step loop).

        Raises (before any work): ValueError for a prompt longer than ``max_model_len``, with more
        placeholder tokens than the registry's maximum, or whose placeholder runs and mapped items
        disagree; TypeError for parameters that are not a
        ``SamplingParams``.
        """
        params = self._check_params(params)
        grammar = self._grammar_state(params)
        length = len(processed.token_ids)
        if length >= self.max_model_len:
            raise ValueError(f"the prompt has {length} tokens (after placeholder expansion); the engine's "
                             f"max_model_len is {self.max_model_len}, which leaves no room to generate")
        mm_rows = placeholder_rows(processed)
        num_placeholders = int((mm_rows >= 0).sum())
        if num_placeholders > self.shapes.rows_per_prompt:
            raise ValueError(f"the prompt has {num_placeholders} multimodal placeholder tokens; the model's "
                             f"registered maximum per prompt allows {self.shapes.rows_per_prompt}")
        spans = bidirectional_spans(processed.token_ids, self.bidirectional_token_id)
        longest = max((b - a for a, b in spans), default=0)
        if longest > self.config.max_num_batched_tokens:
            raise ValueError(f"the prompt has an image of {longest} tokens that attend to each other, which must run "
                             f"in one step; max_num_batched_tokens is {self.config.max_num_batched_tokens}")
        seed = params.seed if params.seed is not None else int(self._seed_rng.integers(2**31 - 1))
        request = Request(
            request_id=str(next(self._ids)) if request_id is None else request_id, processed=processed,
            params=params, seed=seed, arrival=next(self._ids),
            detokenizer=IncrementalDetokenizer(self.llm.tokenizer, processed.token_ids, params),
            mm_rows=mm_rows, item_spans=item_spans(processed), bidirectional_spans=spans,
            logprobs=[] if params.logprobs is not None else None,
            cumulative_logprob=0.0 if params.logprobs is not None else None,  # as vLLM: tracked with logprobs
            prompt_logprobs=[None] if params.prompt_logprobs is not None else None, grammar=grammar,
        )
        request.encoder_items  # noqa: B018  (one mapped item and key per placeholder run, checked before any work)
        self.scheduler.add(request)
        return request

    @staticmethod
    def _check_params(params: SamplingParams | None) -> SamplingParams:
        params = SamplingParams() if params is None else params
        if not isinstance(params, SamplingParams):
            raise TypeError(f"sampling params must be a SamplingParams, got {type(params).__name__}")
        return params

    def check_structured_outputs(self, params: SamplingParams) -> None:
        """Compile ``params.structured_outputs`` (cached; thread-safe: the server calls it off the engine's
        thread); ``ValueError`` naming what is wrong with the schema, regex or grammar."""
        self._grammar_state(params)

    def _grammar_state(self, params: SamplingParams) -> Any:
        """A fresh ``GrammarState`` for a constrained request (None for a free one); compiled once per constraint."""
        if params.structured_outputs is None:
            return None
        from mmjax.structured.masks import GrammarState  # llguidance: imported when a constraint first comes

        return GrammarState(params.structured_outputs, self._grammar_compiler().compile(params.structured_outputs))

    def _grammar_compiler(self) -> Any:
        from mmjax.structured.compiler import compiler_for

        return compiler_for(self.llm.tokenizer, self.text_config.vocab_size)

    def has_unfinished_requests(self) -> bool:
        return self.scheduler.has_unfinished()

    def abort(self, request: Request) -> None:
        self._release_embeddings(request)
        self.scheduler.abort(request)

    # -- one step -------------------------------------------------------------------

    def step(self) -> list[Request]:
        """Run one step; return the requests that received a token (or finished) in it.

        Raises:
          StepError: the step failed. The requests it could not continue are finished
            with ``finish_reason == "error"`` (``.error`` says why), the step's other
            requests are preempted and recomputed later, and a lost KV cache is rebuilt:
            the engine goes on as a fresh one would. On ``KeyboardInterrupt`` the same
            clean-up runs, no request is failed, and the interrupt propagates.
        """
        start = time.perf_counter()
        try:
            updated = self._step()
            ran = bool(self._in_step)  # a step with nothing scheduled is not counted
        except BaseException as error:
            failed = self._recover(error)
            if not isinstance(error, Exception):
                raise
            raise StepError(failed, error) from error
        finally:
            self._in_step, self._blame = (), None
        if ran:
            kind = "decode_step" if self._last_step_was_decode else "prefill_step"
            self.stats[kind + "_s"] += time.perf_counter() - start
            self.stats[kind + "s"] += 1
        return updated

    def _recover(self, error: BaseException) -> list[Request]:
        """After a failed step: fail the request to blame (or, when none is, every request of the
        step; every request, when the step failed before it had any), preempt the step's others,
        and rebuild the device state if a buffer was lost."""
        failed = []
        if isinstance(error, Exception):  # not Ctrl-C
            # Before the step knew its requests (scheduling failed), nothing says whose it was: all fail.
            everyone = [*self.scheduler.running, *self.scheduler.waiting]
            failed = [self._blame] if self._blame is not None else list(self._in_step) or everyone
        for request in failed:
            request.error = f"{type(error).__name__}: {error}"
            request.finish_reason, request.stop_reason = "error", None
            self._release_embeddings(request)
            self.scheduler.abort(request)  # out of the queue or the batch, pages freed
        survivors = [r for r in self._in_step if r not in failed and not r.finished]
        if self.runner.lost_device_state():  # a donated buffer never came back: nothing cached survives
            self.runner.reset()
            self.scheduler.reset_prefix_cache()
            self.embedding_rows.reset()
            survivors = [r for r in self.scheduler.running if r not in failed]
        for request in sorted(survivors, key=lambda r: r.arrival, reverse=True):  # oldest ends up first
            if request in self.scheduler.running:
                self._release_embeddings(request)
                self.scheduler.preempt(request)
        return failed

    def _step(self) -> list[Request]:
        decision = self.scheduler.schedule()
        for request in decision.preempted:
            self._release_embeddings(request)  # encoded again when it comes back
        chunks = decision.chunks
        self._in_step = tuple(c.request for c in chunks)
        self.stats["preemptions"] += len(decision.preempted)
        self._last_step_was_decode = all(c.num_tokens == 1 for c in chunks)
        if not chunks:
            return []
        self._encode([c.request for c in chunks  # not when cached pages hold every placeholder left
                      if c.request.needs_mm_embeds and c.start < c.request.placeholder_end])
        want_prompt_logprobs = any(_wants_prompt_logprobs(c) for c in chunks)
        batch = build_step_batch(chunks, self.allocators, token_buckets=self.config.token_buckets,
                                 decode_buckets=self.config.decode_buckets,
                                 max_num_seqs=self.config.max_num_seqs, pages_per_seq=self.pages_per_seq,
                                 all_logits=want_prompt_logprobs, with_embeddings=bool(self.runner.embedding_width),
                                 rope_axes=self.runner.rope_axes)
        step = self.runner.execute(batch)
        rows = batch.sample_rows
        if want_prompt_logprobs:  # logits of every token: keep each chunk's last, in chunk order
            self._prompt_logprobs(chunks, batch, step.logits)
            step = StepOutput(self.runner.take_rows(step.logits, rows), None)
            rows = tuple(range(len(chunks)))
        for chunk in chunks:
            chunk.request.num_computed_tokens = chunk.stop
            self.scheduler.register_computed(chunk.request)  # its full pages, for later requests
            if chunk.stop >= chunk.request.placeholder_end:
                self._release_embeddings(chunk.request)  # every placeholder is in the KV cache now
            self.stats["decode_tokens" if chunk.num_tokens == 1 else "prefill_tokens"] += chunk.num_tokens
            self.stats["tokens_per_replica"][chunk.replica] += chunk.num_tokens
        self.stats["steps"] += 1
        self.stats["caches"] = self.cache_stats()
        return self._sample(chunks, rows, step)

    def _encode(self, requests: list[Request]) -> None:
        """Put these requests' placeholder embeddings in arena rows of their replicas (computed by
        that replica's devices; on a host holding none of them, only the rows are booked).

        The item is the unit: each request gets rows item by item, an item the encoder cache holds
        (or another item of this step encodes) is not encoded, and the others are encoded alone or
        with items of one replica whose inputs have the same shapes, up to ``max_encoder_batch`` per
        call. Should a shared call fail, its items are encoded one by one, so that the failure is
        blamed on the request whose item caused it.
        """
        groups: dict[tuple, list[tuple[Request, int]]] = {}
        use_cache = self.config.encoder_cache_tokens != 0
        for request in requests:
            self._blame = request
            items = request.encoder_items
            claims = self.embedding_rows.assign(
                request.request_id, request.replica, [(i.key if use_cache else None, i.num_rows) for i in items])
            request.mm_slots = np.concatenate([rows for rows, _ in claims])
            for index, (item, (_, shared)) in enumerate(zip(items, claims)):
                if not shared:  # else the cache holds its embeddings, or another item of this step encodes them
                    key = (request.replica, self.runner.input_key(item.inputs))
                    groups.setdefault(key, []).append((request, index))
        size = self.config.max_encoder_batch
        for (replica, _), members in groups.items():
            for part in (members[i:i + size] for i in range(0, len(members), size)):
                if len(part) > 1 and self._encode_together(part, replica):
                    continue
                for request, index in part:
                    self._blame = request
                    self.runner.encode(request.encoder_items[index].inputs, replica, self._item_slots(request, index))
                    self.embedding_rows.filled(request.request_id, index)
                    self._count_encode(1)
        self._blame = None

    @staticmethod
    def _item_slots(request: Request, index: int) -> np.ndarray:
        """The arena rows of item ``index`` of ``request`` (its stretch of ``mm_slots``)."""
        start = sum(item.num_rows for item in request.encoder_items[:index])
        return request.mm_slots[start:start + request.encoder_items[index].num_rows]

    def _encode_together(self, items: list[tuple[Request, int]], replica: int) -> bool:
        """One encoder call for ``items`` (request, item index); False if it failed and left the device
        state as it was (a failure that lost it has no one request to blame, and propagates)."""
        self._blame = None
        try:
            self.runner.encode_many([(r.encoder_items[i].inputs, self._item_slots(r, i)) for r, i in items], replica)
        except Exception:
            if self.runner.lost_device_state():
                raise
            return False
        for request, index in items:
            self.embedding_rows.filled(request.request_id, index)
        self._count_encode(len(items))
        return True

    def _count_encode(self, num_items: int) -> None:
        self.stats["encoder_calls"] += 1
        self.stats["encoded_items"] += num_items

    def reset_caches(self) -> None:
        """Forget every cached KV page, encoder output and mapped input (vLLM's ``reset_prefix_cache``
        and ``reset_mm_cache``); running requests keep what they hold. The counters stay."""
        self.scheduler.reset_prefix_cache()
        self.embedding_rows.reset()
        processor = getattr(self.llm, "processor_cache", None)
        if processor is not None:
            processor.clear()

    def update_weights(self, source: LoadedModel) -> None:
        """Serve ``source``'s parameters from now on (vLLM's weight sync for RL), without compiling a program
        or reallocating the KV cache: the next ``generate`` equals a freshly built engine's with those weights.

        ``source``: a loaded model of the same architecture, shapes and dtype, e.g. ``mmjax.train(llm, ...).llm``
        (LoRA adapters merged). Its parameters are copied (never aliased: deleting or donating them later does
        not touch the engine), each placed as the old one (sharding, commitment), so the compiled programs run
        them as they are; for a moment the device holds the old weights, the source's and the copy. The engine's
        model (``engine.llm``) gets the new state too, so ``llm.logits`` and an engine built later agree with
        this one. Invalidated: the prefix cache (cached KV pages were computed with the old weights) and the
        encoder cache (embeddings of images); kept: the processor cache (mapped inputs do not depend on the
        weights), the KV pages themselves and every counter of ``cache_stats``.

        Called between requests, from the thread that drives the engine: it refuses while any request is
        waiting or running (their KV would mix two models); finish or abort them first (an RL loop pauses
        generation before a weight sync, as vLLM's integrations do).

        Raises (the engine keeps its old weights on any of them):
          RuntimeError: requests are in flight (counted).
          TypeError: ``source`` is not a loaded model (a ``TrainResult`` is told to pass ``.llm``).
          ValueError: another architecture, parameter shape or dtype (the first differing parameter named), or
            another static configuration (e.g. a norm epsilon: the compiled programs could not follow it).
        """
        self._check_no_requests("update_weights")
        state = checked_state(self.runner.graphdef, self.runner.state, source, getattr(self.llm, "hf_config", None))
        new_state = placed_like(state, self.runner.state)
        self.runner.set_weights(new_state)
        set_state(self.llm, new_state)
        self.scheduler.reset_prefix_cache()
        self.embedding_rows.reset()
        self.stats["caches"] = self.cache_stats()

    def _check_no_requests(self, action: str) -> None:
        if self.has_unfinished_requests():
            waiting, running = len(self.scheduler.waiting), len(self.scheduler.running)
            raise RuntimeError(f"{action} needs an idle engine, but {running} request(s) are running and {waiting} "
                               f"waiting; step them to completion (or abort them) first")

    def cache_stats(self) -> dict[str, dict[str, int | float]]:
        """Hit rates and sizes of the prefix cache, the encoder cache and the (shared) processor cache.

        ``prefix_cache``: tokens of admitted requests looked up (``queries``) and found (``hits``),
        full pages registered (``cached_pages``) and their bytes. ``encoder_cache``: items whose
        embeddings were found or not, entries (one per item), arena rows and bytes. ``processor_cache``: see
        ``ProcessorCache.stats``.
        """
        queries, hits = self.scheduler.prefix_queries, self.scheduler.prefix_hits
        pages = sum(a.num_cached_pages for a in self.allocators)
        encoder = self.embedding_rows.stats()
        row_bytes = self.runner.embedding_width * self.runner.dtype.itemsize
        processor = getattr(self.llm, "processor_cache", None)
        return {
            "prefix_cache": {"enabled": self.config.enable_prefix_caching, "queries": queries, "hits": hits,
                             "hit_rate": hits / queries if queries else 0.0, "cached_pages": pages,
                             "bytes": pages * self.memory.page_bytes},
            "encoder_cache": {**encoder, "bytes": encoder["rows"] * row_bytes},
            "processor_cache": processor.stats() if processor is not None else {},
        }

    def _release_embeddings(self, request: Request) -> None:
        self.embedding_rows.release(request.request_id)
        request.mm_slots = None

    def _prompt_logprobs(self, chunks: tuple[ScheduledChunk, ...], batch, logits) -> None:
        next_tokens = np.zeros(batch.input_ids.size, np.int32)
        for chunk, offset in zip(chunks, batch.chunk_offsets):
            following = chunk.request.token_ids(chunk.start + 1, min(chunk.stop + 1, chunk.request.num_prompt_tokens))
            next_tokens[offset:offset + len(following)] = following
        result = self.runner.prompt_logprobs(logits, next_tokens, MAX_LOGPROBS)
        for chunk, offset in zip(chunks, batch.chunk_offsets):
            if _wants_prompt_logprobs(chunk):
                record_prompt_logprobs(chunk, offset, result, self.llm.tokenizer)

    def _sample(self, chunks: tuple[ScheduledChunk, ...], rows: tuple[int, ...], step: StepOutput) -> list[Request]:
        """Sample the chunks that end at their request's last token; ``rows[i]``: chunk ``i``'s logits row.

        On an accelerator this runs while the device computes ``step`` (dispatched, not awaited): the
        constrained rows' masks are filled here, on the host, in that time. On a CPU the step is awaited
        first (``_masks_after_step``)."""
        sampling = [(c, row) for c, row in zip(chunks, rows) if c.samples]
        if not sampling:
            return []
        if self._masks_after_step and any(c.request.grammar is not None for c, _ in sampling):
            step.logits.block_until_ready()  # on a CPU the "device" is these cores: see _masks_after_step
        out = self.runner.sample_step(step, self._sampling_batch(sampling))
        for chunk, row in sampling:
            self._blame = chunk.request
            self._append(chunk.request, row, out)
        self._blame = None
        return [c.request for c, _ in sampling]

    @functools.cached_property
    def _masks_after_step(self) -> bool:
        """Whether constrained rows' masks are filled after the step is done rather than while it runs. On a
        CPU backend the step's program and llguidance's threads share the same cores: filling 8 rows' masks
        took 1.7-2.0 ms a decode step while the step ran, 0.3 ms after it (benchmarks/structured_outputs.py,
        the benchmark LLaVA on the 2-core host). On an accelerator the host fills them while the step runs."""
        return jax.default_backend() == "cpu"

    def _sampling_batch(self, sampling: list[tuple[ScheduledChunk, int]]) -> SamplingBatch:
        """The step's sampling inputs; should they fail to build, the request whose parameters or grammar
        fail alone is blamed (found by building each row by itself), so that the step's others go on."""
        rows = [SampledRow(row, c.request.params, c.request.seed, c.request.output_token_ids,
                           c.request.prompt_token_ids) for c, row in sampling]
        vocab = self.text_config.vocab_size
        try:
            return SamplingBatch.build(rows, self._allowed_tokens(sampling), vocab)
        except Exception:
            for (chunk, _), row in zip(sampling, rows):
                self._blame = chunk.request
                SamplingBatch.build([dataclasses.replace(row, row=0)], self._allowed_tokens([(chunk, 0)], 1), vocab)
            self._blame = None
            raise

    def _allowed_tokens(self, sampling: list[tuple[ScheduledChunk, int]], num_rows: int | None = None) -> np.ndarray:
        """uint32 ``[B, ceil(V / 32)]`` masks: each constrained row's allowed tokens, all ones elsewhere."""
        num_rows = self.shapes.sample_rows if num_rows is None else num_rows
        vocab = self.text_config.vocab_size
        constrained = [(row, c.request.grammar) for c, row in sampling if c.request.grammar is not None]
        if not constrained:
            return all_allowed(num_rows, vocab)
        from mmjax.structured.masks import fill_masks

        for _, grammar in constrained:
            grammar.check()
        masks = all_allowed(num_rows, self._grammar_compiler().vocab_size)  # the grammar tokenizer's width
        fill_masks(masks, constrained)
        return np.ascontiguousarray(masks[:, :mask_words(vocab)])

    def _append(self, request: Request, row: int, out: Any) -> None:
        token = int(out.tokens[row])
        completes = False
        if request.grammar is not None:
            request.grammar.accept(token)
            completes = request.grammar.complete
        request.output_token_ids.append(token)
        record_sample(request, row, out, self.llm.tokenizer)
        request.detokenizer.append(token, completes=completes)
        stop = request.detokenizer.check_stop(token, self.llm.tokenizer.eos_token_id)
        if stop is None and request.num_tokens >= self.max_model_len:
            request.detokenizer.finish("length")  # flushes text held back for stop strings
            stop = ("length", None)
        if stop is not None:
            request.finish_reason, request.stop_reason = stop
            self._release_embeddings(request)
            self.scheduler.finish(request)

    # -- warm-up --------------------------------------------------------------------

    def warmup(self, prompt_logprobs: bool = True) -> int:
        """Compile every step shape ahead of time; return how many programs were compiled.

        ``prompt_logprobs=False`` skips the programs only ``prompt_logprobs`` requests use.
        """
        model = self.llm.model
        encoder_inputs = model.encoder_input_variants(InputContext(self.llm.model_config), self.llm.mm_registry) \
            if self.runner.embedding_width else []
        return warm_up(self.runner, encoder_inputs, prompt_logprobs)


def _wants_prompt_logprobs(chunk: ScheduledChunk) -> bool:
    return chunk.request.params.prompt_logprobs is not None and chunk.start < chunk.request.num_prompt_tokens
