"""Requests a step starts share vision-tower calls (``EngineConfig.max_encoder_batch``).

The reference for the embeddings is the model's own ``multimodal_embeddings``
called on each request alone; for generation, the engine encoding one request
per call (whose greedy tokens the greedy tests hold against transformers).
"""

from __future__ import annotations

import numpy as np
import pytest

import mmjax
from engine_fixtures import LLAVA, NEXT, load, picture
from mmjax.engine import count_compilations
from mmjax.engine.defaults import default_encoder_batch

SIZES = dict(page_size=8, max_num_seqs=4, max_num_batched_tokens=256, max_model_len=320)
PARAMS = mmjax.SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True)


def image_prompts(shapes: list[tuple[int, int]], seed: int = 0) -> list[dict]:
    return [{"prompt": f"USER: <image>\nWhat is in picture {i}? ASSISTANT:",
             "multi_modal_data": {"image": picture(h, w, seed=seed + i)}} for i, (h, w) in enumerate(shapes)]


def test_config_buckets_defaults_and_validation():
    assert mmjax.EngineConfig(max_encoder_batch=8).encoder_batch_buckets == (1, 2, 4, 8)
    assert mmjax.EngineConfig(max_encoder_batch=6).encoder_batch_buckets == (1, 2, 4, 6)
    assert mmjax.EngineConfig(max_encoder_batch=1).encoder_batch_buckets == (1,)
    assert (default_encoder_batch("cpu"), default_encoder_batch("gpu"), default_encoder_batch("tpu")) == (1, 8, 8)
    assert mmjax.EngineConfig().max_encoder_batch == default_encoder_batch()
    for bad in (0, -2, 2.0, True):
        with pytest.raises(ValueError, match="max_encoder_batch must be an int >= 1"):
            mmjax.EngineConfig(max_encoder_batch=bad)


@pytest.mark.parametrize("kind", [LLAVA, NEXT])
def test_one_call_writes_each_requests_embeddings_and_nothing_else(kind):
    llm = load(kind)
    runner = llm.engine(mmjax.EngineConfig(max_encoder_batch=4, **SIZES)).runner
    runner.reset()
    processed = [llm.process(p) for p in image_prompts([(40, 41), (41, 40), (40, 40)], seed=3)]
    keys = {runner.input_key(p.mm_kwargs) for p in processed}
    assert len(keys) == 1, "the three images must give inputs of one shape (one call)"
    expected = [np.asarray(llm.model.multimodal_embeddings(**p.mm_kwargs)) for p in processed]
    counts = [len(e) for e in expected]  # every embedding the encoder gives, bucket padding included
    starts = np.cumsum([16] + counts[:-1]) + np.arange(3) * 5  # disjoint row ranges with gaps
    rows = [start + np.arange(n) for start, n in zip(starts, counts)]
    runner.encode_many([(p.mm_kwargs, r) for p, r in zip(processed, rows)], 0)  # 3 requests -> bucket 4
    arena = np.asarray(runner.arena(0))[0]
    written = np.zeros(len(arena), bool)
    for want, r, n in zip(expected, rows, counts):
        np.testing.assert_allclose(arena[r], want[:n], rtol=1e-5, atol=1e-5)
        written[r] = True
    assert not arena[~written].any(), "the padding request and the bucket's padding rows wrote nothing"


@pytest.mark.parametrize("kind", [LLAVA, NEXT])
def test_generate_with_shared_calls_gives_the_one_by_one_tokens(kind):
    # NeXT: two aspect ratios -> two tile buckets -> two groups of two; LLaVA-1.5: one group of four.
    prompts = image_prompts([(40, 41), (20, 70), (41, 40), (21, 70)], seed=7) + ["USER: Hello. ASSISTANT:"]
    llm = load(kind)
    sizes = {**SIZES, "max_num_batched_tokens": 1024}  # every prompt starts in the first step
    alone = mmjax.generate(llm, prompts, PARAMS, engine_config=mmjax.EngineConfig(max_encoder_batch=1, **sizes),
                           use_tqdm=False)
    config = mmjax.EngineConfig(max_encoder_batch=4, **sizes)
    engine = llm.engine(config)
    before = dict(engine.stats)
    together = mmjax.generate(llm, prompts, PARAMS, engine_config=config, use_tqdm=False)
    assert [list(o.token_ids) for o in together] == [list(o.token_ids) for o in alone]
    calls = engine.stats["encoder_calls"] - before["encoder_calls"]
    encoded = engine.stats["encoded_items"] - before["encoded_items"]
    groups = len({engine.runner.input_key(llm.process(p).mm_kwargs) for p in prompts[:4]})
    assert encoded == 4 and calls == groups < 4, f"{calls} encoder calls for {groups} input shapes"


def test_no_compilation_after_warmup_with_shared_calls():
    llm = load(LLAVA)
    config = mmjax.EngineConfig(max_encoder_batch=3, **SIZES)  # calls of 1, 2 and 3 requests
    engine = llm.engine(config)
    engine.warmup(prompt_logprobs=False)
    with count_compilations() as compiled:
        for shapes in ([(30, 30)] * 3, [(30, 30)] * 2, [(30, 30)]):
            mmjax.generate(llm, image_prompts(shapes, seed=10 * len(shapes)), PARAMS, engine_config=config,
                           use_tqdm=False)  # six distinct images: the encoder cache finds none of them
    assert engine.stats["encoder_calls"] == 3 and engine.stats["encoded_items"] == 6
    assert compiled[0] == 0, f"{compiled[0]} programs compiled after warm-up"


class Injected(RuntimeError):
    pass


def test_a_failed_shared_call_is_retried_one_by_one_and_blames_the_culprit(monkeypatch):
    llm = load(LLAVA)
    config = mmjax.EngineConfig(max_encoder_batch=4, **SIZES)
    prompts = image_prompts([(40, 41)] * 3, seed=20)
    fresh = [list(o.token_ids) for o in mmjax.generate(load(LLAVA), prompts, PARAMS, engine_config=config,
                                                       use_tqdm=False)]
    engine = llm.engine(config)
    culprit = llm.process(prompts[1]).mm_kwargs["pixel_values"]
    real_many, real_one = engine.runner.encode_many, engine.runner.encode

    def many(items, replica):
        if len(items) > 1 and any(np.array_equal(mm["pixel_values"], culprit) for mm, _ in items):
            raise Injected("a shared call with the culprit in it")
        return real_many(items, replica)

    def one(mm_kwargs, replica, rows):
        if np.array_equal(mm_kwargs["pixel_values"], culprit):
            raise Injected("the culprit alone")
        return real_one(mm_kwargs, replica, rows)

    monkeypatch.setattr(engine.runner, "encode_many", many)
    monkeypatch.setattr(engine.runner, "encode", one)
    outputs = mmjax.generate(llm, prompts, PARAMS, engine_config=config, errors="return", use_tqdm=False)
    assert [o.error is not None for o in outputs] == [False, True, False]
    assert "Injected: the culprit alone" in outputs[1].error
    assert [list(outputs[i].token_ids) for i in (0, 2)] == [fresh[0], fresh[2]]
    assert not engine.has_unfinished_requests() and engine.embedding_rows.num_held == 0
    assert all(a.num_free_pages == a.num_pages - 1 for a in engine.allocators)
