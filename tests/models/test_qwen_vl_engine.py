"""Qwen2.5-VL and Qwen3-VL through the engine: greedy output equals transformers' token for token, M-RoPE
positions (and Qwen3-VL's DeepStack rows) carried through chunked prefill, decode, the caches and preemption;
nothing compiles after warm-up."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import mmjax
from mmjax.engine import count_compilations
from tiny_qwen import FAMILIES, IMAGE, chat, loaded, picture, reference, reference_inputs

MAX_TOKENS = 10
PARAMS = mmjax.SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True)
# Chunks of 32 tokens: the prompts' images (up to 72 placeholders) are cut across chunks.
CONFIG = mmjax.EngineConfig(page_size=8, max_num_seqs=4, max_num_batched_tokens=32, max_model_len=320)
BATCH = [
    {"prompt": chat(f"Compare {IMAGE} with this.", images=1),
     "multi_modal_data": {"image": [picture(150, 60, seed=1), picture(90, 200, seed=2)]}},
    chat("Count to five."),
    {"prompt": chat("Describe it.", images=1), "multi_modal_data": {"image": picture(70, 130, seed=3)}},
]


def transformers_greedy(llm: mmjax.LLM, prompt, family: str) -> list[int]:
    """transformers' greedy continuation (the checkpoint's repetition penalty switched off, as ours is)."""
    model, _ = reference(family=family)
    inputs = reference_inputs(llm, prompt, family=family)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=MAX_TOKENS, min_new_tokens=MAX_TOKENS, do_sample=False,
                             repetition_penalty=1.0)
    return out[0, inputs["input_ids"].shape[1]:].tolist()


@pytest.fixture(scope="module", params=FAMILIES)
def family(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def want(family):
    llm = loaded(family=family)
    return [transformers_greedy(llm, p, family) for p in BATCH]


def test_greedy_batch_equals_transformers_with_chunked_prefill(family, want):
    outputs = mmjax.generate(loaded(family=family), BATCH, PARAMS, engine_config=CONFIG, use_tqdm=False)
    assert [list(o.token_ids) for o in outputs] == want


def test_outputs_are_the_same_with_every_cache_off(family, want):
    llm = loaded(family=family)
    off = dataclasses.replace(CONFIG, enable_prefix_caching=False)
    again = mmjax.generate(llm, BATCH, PARAMS, engine_config=off, use_tqdm=False)
    assert [list(o.token_ids) for o in again] == want
    # the same prompts a second time: the prefix and encoder caches answer, outputs unchanged
    cached = mmjax.generate(llm, BATCH, PARAMS, engine_config=CONFIG, use_tqdm=False)
    assert [list(o.token_ids) for o in cached] == want


def test_preempted_requests_are_recomputed_with_their_positions(family, want):
    """A KV cache too small for the batch: requests are preempted and recomputed, their generated tokens
    then prefilled at their M-RoPE positions (index + rope delta)."""
    llm = loaded(family=family)
    longest = max(len(llm.process(p).token_ids) for p in BATCH) + MAX_TOKENS
    pages = -(-longest // CONFIG.page_size) + 2  # one longest sequence fits (and the null page); three do not
    small = dataclasses.replace(CONFIG, max_model_len=longest, kv_cache_bytes=_bytes_for_pages(llm, CONFIG, pages))
    engine = llm.engine(small)
    outputs = mmjax.generate(llm, BATCH, PARAMS, engine_config=small, use_tqdm=False)
    assert engine.stats["preemptions"] > 0
    assert [list(o.token_ids) for o in outputs] == want


def test_a_follow_up_prompt_with_one_more_image_maps_and_encodes_only_that_image(family, monkeypatch):
    """The item is the unit: a second turn puts a new image before the first turn's two; the processor cache
    maps only the new one, the encoder runs on it alone, and the answer is still transformers'."""
    llm = loaded(family=family)
    engine = llm.engine(CONFIG)
    old = [picture(150, 60, seed=1), picture(90, 200, seed=2)]
    first = {"prompt": chat(f"Compare {IMAGE} with this.", images=1), "multi_modal_data": {"image": old}}
    follow_up = {"prompt": chat(f"Now {IMAGE} against {IMAGE} and {IMAGE}?"),
                 "multi_modal_data": {"image": [picture(120, 80, seed=9), *old]}}
    mmjax.generate(llm, first, PARAMS, engine_config=CONFIG, use_tqdm=False)
    mapped, encoded, encode_many = llm.processor_cache.stats(), [], engine.runner.encode_many
    monkeypatch.setattr(engine.runner, "encode_many",
                        lambda items, replica: (encoded.extend(i for i, _ in items), encode_many(items, replica)))
    [output] = mmjax.generate(llm, follow_up, PARAMS, engine_config=CONFIG, use_tqdm=False)
    now = llm.processor_cache.stats()
    assert (now["hits"] - mapped["hits"], now["misses"] - mapped["misses"]) == (2, 1)
    [new_image] = encoded  # the tower ran once, on the new image's patches alone
    alone = llm.process({"prompt": chat("", images=1), "multi_modal_data": {"image": picture(120, 80, seed=9)}})
    np.testing.assert_array_equal(new_image["pixel_values"], alone.mm_items["image"][0]["pixel_values"])
    assert list(output.token_ids) == transformers_greedy(llm, follow_up, family)


def _bytes_for_pages(llm: mmjax.LLM, config: mmjax.EngineConfig, pages: int) -> int:
    text = llm.model.text_config
    per_page = 2 * text.num_layers * text.num_kv_heads * config.page_size * text.head_dim * np.dtype(llm.dtype).itemsize
    return pages * per_page


def test_nothing_compiles_after_warmup_for_new_sizes_and_mixes(family):
    llm = loaded(family=family)
    config = dataclasses.replace(CONFIG, max_num_batched_tokens=64)
    engine = llm.engine(config)
    engine.warmup(prompt_logprobs=False)
    workload = [
        {"prompt": chat("Wide?", images=1), "multi_modal_data": {"image": picture(30, 290, seed=4)}},
        {"prompt": chat("Tall?", images=1), "multi_modal_data": {"image": picture(260, 41, seed=5)}},
        {"prompt": chat("All three?", images=3),
         "multi_modal_data": {"image": [picture(200, 210, seed=6), picture(180, 190, seed=7), picture(9, 9, seed=8)]}},
        chat("Only text."),
    ]
    rows = {llm.process(p).mm_kwargs["pixel_values"].shape[0] for p in workload[:3]}
    assert len(rows) >= 2  # the workload spans several patch buckets
    with count_compilations() as compiled:
        outputs = mmjax.generate(llm, workload, mmjax.SamplingParams(temperature=0.0, max_tokens=3),
                                 engine_config=config, use_tqdm=False)
    assert all(o.finished for o in outputs)
    assert compiled[0] == 0, f"{compiled[0]} programs compiled after warm-up"


def test_bfloat16_weights_stay_close_to_transformers_float32(family):
    """bfloat16 weights (the README's first example): logits near float32 transformers', generation sane."""
    from tiny_qwen import checkpoint, relative_error

    llm = mmjax.load(checkpoint(family=family), dtype="bfloat16", limit_mm_per_prompt={"image": 3},
                     max_model_len=1024)
    prompt = BATCH[0]
    _, ours = llm.logits(prompt)
    model, _ = reference(family=family)
    with torch.no_grad():
        ref = model(**reference_inputs(llm, prompt, family=family)).logits[0].numpy()
    assert ours.dtype == np.float32 and np.isfinite(ours).all()
    assert relative_error(ours, ref) < 5e-2
    outputs = mmjax.generate(llm, BATCH, PARAMS, engine_config=CONFIG, use_tqdm=False)
    assert all(len(o.token_ids) == MAX_TOKENS for o in outputs)
