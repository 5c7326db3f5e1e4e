"""Compile every program a workload can need, before the first request.

The shapes are enumerable because the engine fixes them (``StepShapes``): the
token buckets, the fixed sequence axis, the block-table width, the embedding
arena, and the encoder's inputs, which the model lists
(``EngineModel.encoder_input_variants``). Warm-up works through the device
runner's public methods only: its steps schedule no sequence and its encodes
fill no arena row, so they write nothing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence

import jax
import numpy as np
from jax import monitoring

from mmjax.engine.programs import step_variants
from mmjax.engine.runner import ModelRunner
from mmjax.engine.sampler import SamplingTensors, SeenTokens
from mmjax.engine.sampling_batch import SamplingBatch
from mmjax.engine.sampling_params import MAX_LOGPROBS, SamplingParams
from mmjax.structured.bitmask import all_allowed

_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
_compiles = 0


def _count(event: str, duration: float, **_) -> None:
    global _compiles
    if event == _COMPILE_EVENT:
        _compiles += 1


monitoring.register_event_duration_secs_listener(_count)


def total_compilations() -> int:
    """XLA compilations in this process so far (a server reports those after its warm-up)."""
    return _compiles


@contextlib.contextmanager
def count_compilations() -> Iterator[list[int]]:
    """``with count_compilations() as n: ...``; afterwards ``n[0]`` is the number of XLA compilations."""
    box = [0]
    start = _compiles
    try:
        yield box
    finally:
        box[0] = _compiles - start


def warm_up(runner: ModelRunner, encoder_inputs: Sequence[Mapping[str, np.ndarray]],
            prompt_logprobs: bool = True) -> int:
    """Compile the runner's encoder, step and sampler programs; return the count compiled.

    ``encoder_inputs``: one input of every shape the encoder can get (``EngineModel.encoder_input_variants``).
    ``prompt_logprobs=False`` skips the programs only requests with ``prompt_logprobs`` use.
    """
    with count_compilations() as compiled:
        _warm_encoder(runner, encoder_inputs)
        _warm_sampler(runner, _warm_steps(runner, prompt_logprobs))
    return compiled[0]


def _warm_encoder(runner: ModelRunner, encoder_inputs: Sequence[Mapping[str, np.ndarray]]) -> None:
    """The encoder for every input shape, on each data replica this process holds (on a mesh
    every replica encodes its own requests' items, with a program of its own)."""
    if not runner.embedding_width:
        return
    no_rows = np.zeros(0, np.int32)
    for mm in encoder_inputs:
        for replica in runner.placement.owned_replicas():
            for count in runner.shapes.encoder_batch_buckets:  # one request, or several in one call
                runner.encode_many([(mm, no_rows)] * count, replica)
    jax.block_until_ready(runner.embeddings())


def _warm_steps(runner: ModelRunner, with_prompt_logprobs: bool) -> jax.Array:
    """Run every step variant once; return the sampler's logits of one of them (placed as a real step's are:
    committed to a device when the step had committed inputs, so the sampler is warmed up for them)."""
    sampler_logits = None
    for tokens, decode, all_logits in step_variants(runner.shapes, with_prompt_logprobs):
        step = runner.execute(runner.empty_batch(tokens, decode=decode, all_logits=all_logits))
        logits = step.logits
        if all_logits:
            runner.prompt_logprobs(logits, np.zeros(runner.shapes.num_replicas * tokens, np.int32), MAX_LOGPROBS)
            runner.take_rows(logits, []).block_until_ready()
        else:  # the padding a sampled (not plain greedy) step's logits take to the sampler
            sampler_logits = runner.sampler_logits(logits).block_until_ready()
    return sampler_logits


def _warm_sampler(runner: ModelRunner, logits: jax.Array) -> None:
    rows = runner.shapes.sample_rows
    vocab = runner.text_config.vocab_size
    tensors = SamplingTensors.build([SamplingParams()], seeds=[0], steps=[0], pad_to=rows)
    seen = SeenTokens.build([], [], [], vocab, pad_to=rows)  # the variant for requests with penalties
    allowed = all_allowed(rows, vocab)  # every sampler call carries masks (all ones for free rows)
    for num_logprobs in (None, MAX_LOGPROBS):  # what the engine asks for: none, or every request's top ones
        for penalties in (None, seen):
            runner.sample(logits, SamplingBatch(tensors, penalties, allowed, num_logprobs, takes_step_greedy=False))
