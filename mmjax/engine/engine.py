"""``LLMEngine``: requests in, tokens out, one continuous-batching step at a time.

Host bookkeeping (queue, pages, detokenization) is plain Python; the device
runs three jitted functions whose shapes all come from the engine config:
``encode_multimodal`` (once per request with images), ``paged_step`` and the
sampler. ``warmup()`` compiles all of them ahead of time.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mmjax.engine.batch import StepBatch, build_step_batch
from mmjax.engine.config import EngineConfig
from mmjax.engine.detokenizer import IncrementalDetokenizer
from mmjax.engine.memory import MemoryPlan, plan_kv_cache, tree_bytes
from mmjax.engine.request import Request, placeholder_rows
from mmjax.engine.sampler import SamplingTensors, prompt_logprobs, sample
from mmjax.engine.sampling_params import MAX_LOGPROBS, SamplingParams
from mmjax.engine.scheduler import ScheduledChunk, Scheduler
from mmjax.engine.step import check_paged_support, encode_multimodal, paged_step
from mmjax.engine.logprobs import record_prompt_logprobs, record_sample
from mmjax.kv_cache import KVPages, PageAllocator, init_kv_pages
from mmjax.registry import INPUT_REGISTRY, PromptInputs


class LLMEngine:
    """Continuous batching over a paged KV cache for one loaded model (``mmjax.LLM``)."""

    def __init__(self, llm: Any, config: EngineConfig | None = None):
        self.llm = llm
        self.config = config or EngineConfig()
        model = llm.model
        check_paged_support(model)
        self.text_config = model.language_model.config
        self.max_model_len = self._max_model_len()
        self.pages_per_seq = -(-self.max_model_len // self.config.page_size)
        self.kv_sharding = self._kv_sharding()
        self.memory = self._plan_memory()
        self.kv_pages = self._init_pages()
        self.allocator = PageAllocator(self.memory.num_pages, self.config.page_size)
        self.scheduler = Scheduler(self.allocator, max_num_seqs=self.config.max_num_seqs,
                                   max_num_batched_tokens=self.config.max_num_batched_tokens)
        self._last_step_was_decode = True
        self._ids = itertools.count()
        self._seed_rng = np.random.default_rng()
        self.stats = {"steps": 0, "preemptions": 0, "prefill_tokens": 0, "decode_tokens": 0,
                      "prefill_step_s": 0.0, "decode_step_s": 0.0}

    # -- set-up -------------------------------------------------------------------

    def _max_model_len(self) -> int:
        limit = self.config.max_model_len or self.llm.model_config.context_length
        if limit is None:
            raise ValueError("the model config states no context length: set EngineConfig.max_model_len")
        return int(limit)

    def _kv_sharding(self) -> Any:
        """On a mesh: the pages split over KV heads like the k/v projections (None on one device)."""
        if getattr(self.llm, "mesh", None) is None:
            return None
        from mmjax.sharding import kv_pages_sharding

        return kv_pages_sharding(self.llm.mesh, self.text_config.num_kv_heads)

    def _place(self, pages: tuple[KVPages, ...]) -> tuple[KVPages, ...]:
        return pages if self.kv_sharding is None else jax.device_put(pages, self.kv_sharding)

    def _plan_memory(self) -> MemoryPlan:
        text = self.text_config
        return plan_kv_cache(
            num_layers=text.num_layers, num_kv_heads=text.num_kv_heads, head_dim=text.head_dim,
            dtype=self.llm.dtype, page_size=self.config.page_size, weights_bytes=tree_bytes(self.llm.state),
            activation_bytes=self._worst_case_activation_bytes(), min_pages=self.pages_per_seq + 1,
            max_useful_pages=self.config.max_num_seqs * self.pages_per_seq + 1,
            num_pages=self.config.num_pages, kv_cache_bytes=self.config.kv_cache_bytes,
            memory_utilization=self.config.memory_utilization,
        )

    def _worst_case_activation_bytes(self) -> int:
        """Temporary memory of the largest step and of encoding the dummy data's images (not run)."""
        dummy = INPUT_REGISTRY.dummy_data_for_profiling(self.llm.model_config, self.config.max_num_batched_tokens)
        total = 0
        if dummy.multi_modal_data:
            mm = self.llm.mm_registry.map_input(self.llm.model_config, dummy.multi_modal_data)
            compiled = encode_multimodal.lower(self.llm.graphdef, self.llm.state, _device(mm)).compile()
            total += compiled.memory_analysis().temp_size_in_bytes
        text = self.text_config
        t = self.config.max_num_batched_tokens
        pages = self._place(init_kv_pages(text.num_layers, text.num_kv_heads, 2, self.config.page_size,
                                          text.head_dim, self.llm.dtype))
        batch = _abstract_batch(t, self.config.max_num_seqs, self.pages_per_seq, text.hidden_size, self.llm.dtype)
        compiled = paged_step.lower(self.llm.graphdef, self.llm.state, pages, *batch, impl=self.config.impl,
                                    kv_sharding=self.kv_sharding).compile()
        return total + compiled.memory_analysis().temp_size_in_bytes

    def _init_pages(self) -> tuple[KVPages, ...]:
        text = self.text_config
        return self._place(init_kv_pages(text.num_layers, text.num_kv_heads, self.memory.num_pages,
                                         self.config.page_size, text.head_dim, self.llm.dtype))

    # -- requests -------------------------------------------------------------------

    def add_request(self, prompt: PromptInputs, params: SamplingParams | None = None,
                    request_id: str | None = None) -> Request:
        """Validate and queue one prompt. Raises (before any work) for a bad prompt or parameters."""
        params = SamplingParams() if params is None else params
        if not isinstance(params, SamplingParams):
            raise TypeError(f"sampling params must be a SamplingParams, got {type(params).__name__}")
        processed = self.llm.process(prompt)
        length = len(processed.token_ids)
        if length >= self.max_model_len:
            raise ValueError(f"the prompt has {length} tokens (after placeholder expansion); the engine's "
                             f"max_model_len is {self.max_model_len}, which leaves no room to generate")
        seed = params.seed if params.seed is not None else int(self._seed_rng.integers(2**31 - 1))
        request = Request(
            request_id=str(next(self._ids)) if request_id is None else request_id, processed=processed,
            params=params, seed=seed, arrival=next(self._ids),
            detokenizer=IncrementalDetokenizer(self.llm.tokenizer, processed.token_ids, params),
            mm_rows=placeholder_rows(processed),
            logprobs=[] if params.logprobs is not None else None,
            prompt_logprobs=[None] if params.prompt_logprobs is not None else None,
        )
        self.scheduler.add(request)
        return request

    def has_unfinished_requests(self) -> bool:
        return self.scheduler.has_unfinished()

    def abort(self, request: Request) -> None:
        self.scheduler.abort(request)

    # -- one step -------------------------------------------------------------------

    def step(self) -> list[Request]:
        """Run one step; return the requests that received a token (or finished) in it."""
        start = time.perf_counter()
        updated = self._step()
        kind = "decode_step_s" if self._last_step_was_decode else "prefill_step_s"
        self.stats[kind] += time.perf_counter() - start
        return updated

    def _step(self) -> list[Request]:
        decision = self.scheduler.schedule()
        chunks = decision.chunks
        self.stats["preemptions"] += len(decision.preempted)
        self._last_step_was_decode = all(c.num_tokens == 1 for c in chunks)
        if not chunks:
            return []
        for chunk in chunks:
            if chunk.request.needs_mm_embeds and chunk.start < chunk.request.num_prompt_tokens:
                self._encode(chunk.request)
        want_prompt_logprobs = any(_wants_prompt_logprobs(c) for c in chunks)
        batch = build_step_batch(chunks, self.allocator, token_buckets=self.config.token_buckets,
                                 max_num_seqs=self.config.max_num_seqs, pages_per_seq=self.pages_per_seq,
                                 all_logits=want_prompt_logprobs)
        logits = self._run(batch)
        if want_prompt_logprobs:
            self._prompt_logprobs(chunks, batch, logits)
            logits = logits[jax.device_put(_pad(batch.sample_rows, self.config.max_num_seqs))]
        for chunk in chunks:
            chunk.request.num_computed_tokens = chunk.stop
            self.stats["decode_tokens" if chunk.num_tokens == 1 else "prefill_tokens"] += chunk.num_tokens
        self.stats["steps"] += 1
        return self._sample(chunks, logits)

    def _encode(self, request: Request) -> None:
        embeds = encode_multimodal(self.llm.graphdef, self.llm.state, _device(request.processed.mm_kwargs))
        request.mm_embeds = np.asarray(jax.device_get(embeds))

    def _run(self, batch: StepBatch) -> jax.Array:
        mm = () if batch.mm_embeds is None else (jax.device_put(batch.mm_embeds), jax.device_put(batch.mm_mask))
        logits, self.kv_pages = paged_step(
            self.llm.graphdef, self.llm.state, self.kv_pages, jax.device_put(batch.input_ids), batch.metadata,
            jax.device_put(batch.logits_indices), *mm, impl=self.config.impl, kv_sharding=self.kv_sharding)
        return logits

    def _prompt_logprobs(self, chunks: tuple[ScheduledChunk, ...], batch: StepBatch, logits: jax.Array) -> None:
        next_tokens = np.zeros(len(batch.input_ids), np.int32)
        for chunk, offset in zip(chunks, batch.chunk_offsets):
            following = chunk.request.token_ids(chunk.start + 1, min(chunk.stop + 1, chunk.request.num_prompt_tokens))
            next_tokens[offset:offset + len(following)] = following
        result = jax.device_get(prompt_logprobs(logits, jax.device_put(next_tokens), num_logprobs=MAX_LOGPROBS))
        for chunk, offset in zip(chunks, batch.chunk_offsets):
            if _wants_prompt_logprobs(chunk):
                record_prompt_logprobs(chunk, offset, result, self.llm.tokenizer)

    def _sample(self, chunks: tuple[ScheduledChunk, ...], logits: jax.Array) -> list[Request]:
        sampling = [c for c in chunks if c.samples]
        if not sampling:
            return []
        rows = [i for i, c in enumerate(chunks) if c.samples]
        tensors = SamplingTensors.build(
            [chunks[i].request.params if i in rows else SamplingParams(temperature=0.0) for i in range(len(chunks))],
            seeds=[c.request.seed for c in chunks], steps=[len(c.request.output_token_ids) for c in chunks],
            pad_to=self.config.max_num_seqs)
        num_logprobs = MAX_LOGPROBS if any(c.request.params.logprobs is not None for c in sampling) else 0
        out = jax.device_get(sample(logits, tensors, num_logprobs=num_logprobs))
        for i in rows:
            self._append(chunks[i].request, i, out)
        return [c.request for c in sampling]

    def _append(self, request: Request, row: int, out: Any) -> None:
        token = int(out.tokens[row])
        request.output_token_ids.append(token)
        record_sample(request, row, out, self.llm.tokenizer)
        request.detokenizer.append(token)
        stop = request.detokenizer.check_stop(token, self.llm.tokenizer.eos_token_id)
        if stop is None and request.num_tokens >= self.max_model_len:
            request.detokenizer.finish("length")  # flushes text held back for stop strings
            stop = ("length", None)
        if stop is not None:
            request.finish_reason, request.stop_reason = stop
            self.scheduler.finish(request)

    # -- warm-up --------------------------------------------------------------------

    def warmup(self, prompt_logprobs: bool = True) -> int:
        """Compile every step shape ahead of time; return how many programs were compiled.

        ``prompt_logprobs=False`` skips the programs only ``prompt_logprobs`` requests use.
        """
        from mmjax.engine.warmup import warm_up

        return warm_up(self, prompt_logprobs)


def _wants_prompt_logprobs(chunk: ScheduledChunk) -> bool:
    return chunk.request.params.prompt_logprobs is not None and chunk.start < chunk.request.num_prompt_tokens


def _pad(values: Iterable[int], size: int) -> np.ndarray:
    out = np.zeros(size, np.int32)
    values = list(values)
    out[: len(values)] = values
    return out


def _device(tree: Any) -> dict:
    return {k: jax.device_put(v) for k, v in tree.items()}


def _abstract_batch(num_tokens: int, num_seqs: int, pages_per_seq: int, hidden: int, dtype) -> tuple:
    """ShapeDtypeStructs of a prefill step with image embeddings (for compile-only analysis)."""
    from mmjax.kv_cache import AttentionMetadata

    sds, i32 = jax.ShapeDtypeStruct, jnp.int32
    metadata = AttentionMetadata(
        block_tables=sds((num_seqs, pages_per_seq), i32), kv_lens=sds((num_seqs,), i32),
        cu_q_lens=sds((num_seqs + 1,), i32), num_seqs=sds((1,), i32), slot_mapping=sds((num_tokens,), i32),
        positions=sds((num_tokens,), i32), max_q_len=num_tokens)
    return (sds((num_tokens,), i32), metadata, sds((num_seqs,), i32), sds((num_tokens, hidden), dtype),
            sds((num_tokens,), jnp.bool_))
