"""Compile every program a workload can need, before the first request.

The shapes are enumerable because the engine fixes them: the token buckets,
the fixed sequence axis, the block-table width, and, for images, the dummy
data's items (1 to the limit per prompt). Warm-up steps schedule no sequence,
so they write nothing into the cache.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np
from jax import monitoring

from mmjax.engine.batch import empty_step_batch
from mmjax.engine.sampler import SamplingTensors, SeenTokens, prompt_logprobs, sample
from mmjax.engine.sampling_params import MAX_LOGPROBS, SamplingParams
from mmjax.engine.step import encode_multimodal, paged_step
from mmjax.registry import INPUT_REGISTRY, InputContext

if TYPE_CHECKING:
    from mmjax.engine.engine import LLMEngine

_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
_compiles = 0


def _count(event: str, duration: float, **_) -> None:
    global _compiles
    if event == _COMPILE_EVENT:
        _compiles += 1


monitoring.register_event_duration_secs_listener(_count)


@contextlib.contextmanager
def count_compilations() -> Iterator[list[int]]:
    """``with count_compilations() as n: ...``; afterwards ``n[0]`` is the number of XLA compilations."""
    box = [0]
    start = _compiles
    try:
        yield box
    finally:
        box[0] = _compiles - start


def warm_up(engine: "LLMEngine", prompt_logprobs: bool = True) -> int:
    """Compile the engine's encoder, step and sampler programs; return the count compiled.

    ``prompt_logprobs=False`` skips the programs only requests with ``prompt_logprobs`` use.
    """
    with count_compilations() as compiled:
        _warm_encoder(engine)
        _warm_steps(engine, prompt_logprobs)
        _warm_sampler(engine)
    return compiled[0]


def _warm_encoder(engine: "LLMEngine") -> None:
    """The encoder for every input shape, on each data replica this process holds (on a mesh
    every replica encodes its own requests' images, with a program of its own)."""
    replicas = [None] if engine.replicas is None else [
        r for r in range(engine.num_replicas) if engine.replicas.owns(r)]
    for mm in encoder_inputs(engine.llm):
        for replica in replicas:
            jax.block_until_ready(encode_multimodal(*engine.encoder_inputs(mm, replica)))


def encoder_inputs(llm) -> list:
    """Every encoder input shape a workload can bring: the model class's ``encoder_input_variants(ctx)``
    when it has one, else the dummy data's items mapped in counts from 1 to the limit per prompt."""
    config = llm.model_config
    variants = getattr(type(llm.model), "encoder_input_variants", None)
    if variants is not None:
        return list(variants(InputContext(config)))
    dummy = INPUT_REGISTRY.dummy_data_for_profiling(config, seq_len=1)
    inputs = []
    for key, items in dummy.multi_modal_data.items():
        items = items if isinstance(items, list) else [items]
        inputs += [llm.mm_registry.map_input(config, {key: items[:count]}) for count in range(1, len(items) + 1)]
    return inputs


def _warm_steps(engine: "LLMEngine", with_prompt_logprobs: bool) -> None:
    cfg, llm = engine.config, engine.llm
    rows = engine.num_replicas * cfg.max_num_seqs
    hidden = engine.text_config.hidden_size
    mm_dtype = engine._mm_dtype
    decode_sizes = {b for n in range(1, cfg.max_num_seqs + 1) for b in [min(x for x in cfg.token_buckets if x >= n)]}
    for tokens in cfg.token_buckets:
        variants = [(False, False), (False, True)] + ([(True, False)] if tokens in decode_sizes else [])
        for decode, with_mm in variants:
            mm = ()
            if with_mm:
                shape = (engine.num_replicas, tokens)
                mm = (engine._put(np.zeros((*shape, hidden), mm_dtype)), engine._put(np.zeros(shape, bool)))
            for all_logits in ((False,) if decode or not with_prompt_logprobs else (False, True)):
                batch = empty_step_batch(engine.num_replicas, tokens, decode=decode, max_num_seqs=cfg.max_num_seqs,
                                         pages_per_seq=engine.pages_per_seq, page_size=cfg.page_size,
                                         all_logits=all_logits)
                logits, engine.kv_pages = paged_step(
                    llm.graphdef, llm.state, engine.kv_pages, engine._put(batch.input_ids),
                    jax.tree.map(engine._put, batch.metadata), engine._put(batch.logits_indices), *mm,
                    impl=cfg.impl, kv_sharding=engine.kv_sharding)
                if all_logits:
                    flat = engine.num_replicas * tokens
                    jax.block_until_ready(prompt_logprobs(logits, jax.device_put(np.zeros(flat, np.int32)),
                                                          num_logprobs=MAX_LOGPROBS))
                    logits[jax.device_put(np.zeros(rows, np.int32))].block_until_ready()


def _warm_sampler(engine: "LLMEngine") -> None:
    rows = engine.num_replicas * engine.config.max_num_seqs
    vocab = engine.text_config.vocab_size
    tensors = SamplingTensors.build([SamplingParams()], seeds=[0], steps=[0], pad_to=rows)
    logits = jnp.zeros((rows, vocab), jnp.float32)
    seen = SeenTokens.build([], [], [], vocab, pad_to=rows)  # the variant for requests with penalties
    for num_logprobs in (0, MAX_LOGPROBS):
        for penalties in (None, seen):
            jax.block_until_ready(sample(logits, tensors, penalties, num_logprobs=num_logprobs))
