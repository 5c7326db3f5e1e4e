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
import numpy as np

from mmjax.engine.batch import StepBatch, build_step_batch
from mmjax.engine.config import EngineConfig
from mmjax.engine.detokenizer import IncrementalDetokenizer
from mmjax.engine.memory import plan_engine_memory
from mmjax.engine.request import Request, placeholder_rows
from mmjax.engine.sampler import SamplingTensors, SeenTokens, prompt_logprobs, sample
from mmjax.engine.sampling_params import MAX_LOGPROBS, SamplingParams
from mmjax.engine.scheduler import ScheduledChunk, Scheduler
from mmjax.engine.step import check_paged_support, encode_multimodal, paged_step
from mmjax.engine.logprobs import record_prompt_logprobs, record_sample
from mmjax.kv_cache import KVPages, PageAllocator, init_kv_pages
from mmjax.registry import PromptInputs
from mmjax.sharding.mesh import DATA
from mmjax.sharding.multihost import agreed_seed, fetch
from mmjax.sharding.replicas import ReplicaViews


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
        self.mesh = getattr(llm, "mesh", None)
        self.num_replicas = 1 if self.mesh is None else self.mesh.shape[DATA]
        self.kv_sharding = self._kv_sharding()
        self.replicas = None if self.mesh is None else ReplicaViews(self.mesh, llm.state)
        self._mm_dtype = np.dtype(llm.dtype)
        self.memory = plan_engine_memory(self)
        self.kv_pages = self.init_pages(self.memory.num_pages)
        self.allocators = [PageAllocator(self.memory.num_pages, self.config.page_size)
                           for _ in range(self.num_replicas)]
        self.scheduler = Scheduler(self.allocators, max_num_seqs=self.config.max_num_seqs,
                                   max_num_batched_tokens=self.config.max_num_batched_tokens)
        self._last_step_was_decode = True
        self._ids = itertools.count()
        # Seeds of requests without one: the same on every process of a multi-host run.
        self._seed_rng = np.random.default_rng(agreed_seed(int(np.random.SeedSequence().entropy % 2**31)))
        self.stats = {"steps": 0, "preemptions": 0, "prefill_tokens": 0, "decode_tokens": 0,
                      "prefill_step_s": 0.0, "decode_step_s": 0.0, "tokens_per_replica": [0] * self.num_replicas}

    # -- set-up -------------------------------------------------------------------

    def _max_model_len(self) -> int:
        limit = self.config.max_model_len or self.llm.model_config.context_length
        if limit is None:
            raise ValueError("the model config states no context length: set EngineConfig.max_model_len")
        return int(limit)

    def _kv_sharding(self) -> Any:
        """On a mesh: the pages split over replicas ("data") and KV heads ("model"); None on one device."""
        if self.mesh is None:
            return None
        from mmjax.sharding import kv_pages_sharding

        return kv_pages_sharding(self.mesh, self.text_config.num_kv_heads)

    def _put(self, x: np.ndarray) -> jax.Array:
        """A step input with a leading replica axis, onto the device(s): split over "data" on a mesh.

        Each process places only the rows of its own devices' replicas (on several hosts the
        other rows may differ: another host's image embeddings are not computed here).
        """
        if self.mesh is None:
            return jax.device_put(x)
        from jax.sharding import NamedSharding, PartitionSpec

        return jax.make_array_from_callback(x.shape, NamedSharding(self.mesh, PartitionSpec(DATA)),
                                            lambda index: x[index])

    def init_pages(self, pages_per_replica: int) -> tuple[KVPages, ...]:
        """The cache: ``pages_per_replica`` pages for each replica, replica ``r``'s at ``r * pages_per_replica``."""
        text = self.text_config
        return init_kv_pages(text.num_layers, text.num_kv_heads, self.num_replicas * pages_per_replica,
                             self.config.page_size, text.head_dim, self.llm.dtype, sharding=self.kv_sharding)

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
        batch = build_step_batch(chunks, self.allocators, token_buckets=self.config.token_buckets,
                                 max_num_seqs=self.config.max_num_seqs, pages_per_seq=self.pages_per_seq,
                                 all_logits=want_prompt_logprobs, mm_width=self.text_config.hidden_size,
                                 mm_dtype=self._mm_dtype)
        logits = self._run(batch)
        rows = batch.sample_rows
        if want_prompt_logprobs:  # logits of every token: keep each chunk's last, in chunk order
            self._prompt_logprobs(chunks, batch, logits)
            logits = logits[jax.device_put(_pad(rows, self.num_replicas * self.config.max_num_seqs))]
            rows = tuple(range(len(chunks)))
        for chunk in chunks:
            chunk.request.num_computed_tokens = chunk.stop
            self.stats["decode_tokens" if chunk.num_tokens == 1 else "prefill_tokens"] += chunk.num_tokens
            self.stats["tokens_per_replica"][chunk.replica] += chunk.num_tokens
        self.stats["steps"] += 1
        return self._sample(chunks, rows, logits)

    def encoder_inputs(self, mm_kwargs: Any, replica: int | None) -> tuple:
        """``encode_multimodal``'s arguments: on a mesh, on ``replica``'s devices only."""
        if replica is None:
            return self.llm.graphdef, self.llm.state, _device(mm_kwargs)
        return self.llm.graphdef, self.replicas.state(replica), self.replicas.put(dict(mm_kwargs), replica)

    def _encode(self, request: Request) -> None:
        """The request's image embeddings, computed by its own replica (left None on a host that
        holds none of that replica's devices: its rows of the step are not read there)."""
        replica = None if self.replicas is None else request.replica
        if replica is not None and not self.replicas.owns(replica):
            return
        embeds = encode_multimodal(*self.encoder_inputs(request.processed.mm_kwargs, replica))
        request.mm_embeds = np.asarray(fetch(embeds))

    def _run(self, batch: StepBatch) -> jax.Array:
        """Run one step; returns the logits ``[R * S, V]`` (``[R * T, V]`` with prompt logprobs)."""
        mm = () if batch.mm_embeds is None else (self._put(batch.mm_embeds), self._put(batch.mm_mask))
        metadata = jax.tree.map(self._put, batch.metadata)
        logits, self.kv_pages = paged_step(
            self.llm.graphdef, self.llm.state, self.kv_pages, self._put(batch.input_ids), metadata,
            self._put(batch.logits_indices), *mm, impl=self.config.impl, kv_sharding=self.kv_sharding)
        return logits

    def _prompt_logprobs(self, chunks: tuple[ScheduledChunk, ...], batch: StepBatch, logits: jax.Array) -> None:
        next_tokens = np.zeros(batch.input_ids.size, np.int32)
        for chunk, offset in zip(chunks, batch.chunk_offsets):
            following = chunk.request.token_ids(chunk.start + 1, min(chunk.stop + 1, chunk.request.num_prompt_tokens))
            next_tokens[offset:offset + len(following)] = following
        result = fetch(prompt_logprobs(logits, jax.device_put(next_tokens), num_logprobs=MAX_LOGPROBS))
        for chunk, offset in zip(chunks, batch.chunk_offsets):
            if _wants_prompt_logprobs(chunk):
                record_prompt_logprobs(chunk, offset, result, self.llm.tokenizer)

    def _sample(self, chunks: tuple[ScheduledChunk, ...], rows: tuple[int, ...], logits: jax.Array) -> list[Request]:
        """Sample the chunks that end at their request's last token; ``rows[i]``: chunk ``i``'s logits row."""
        sampling = [(c, row) for c, row in zip(chunks, rows) if c.samples]
        if not sampling:
            return []
        num_rows = self.num_replicas * self.config.max_num_seqs
        params, seeds, steps = [SamplingParams(temperature=0.0)] * num_rows, [0] * num_rows, [0] * num_rows
        for chunk, row in sampling:
            params[row], seeds[row], steps[row] = (chunk.request.params, chunk.request.seed,
                                                   len(chunk.request.output_token_ids))
        tensors = SamplingTensors.build(params, seeds=seeds, steps=steps, pad_to=num_rows)
        seen = None  # the tokens each request has seen, only when some request has penalties
        if any(c.request.params.has_penalties for c, _ in sampling):
            seen = SeenTokens.build([c.request.output_token_ids for c, _ in sampling],
                                    [c.request.prompt_token_ids for c, _ in sampling], [row for _, row in sampling],
                                    self.text_config.vocab_size, pad_to=num_rows)
        num_logprobs = MAX_LOGPROBS if any(c.request.params.logprobs is not None for c, _ in sampling) else 0
        out = fetch(sample(logits, tensors, seen, num_logprobs=num_logprobs))
        for chunk, row in sampling:
            self._append(chunk.request, row, out)
        return [c.request for c, _ in sampling]

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
