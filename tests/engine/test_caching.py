"""The engine's caches: prefix caching of KV pages, the encoder cache, the processor cache.

The reference for every output is the same engine with every cache off (whose greedy
tokens the greedy tests hold against transformers); the reference for what is reused is
counted from the prompts themselves: where an image's placeholders start, how many full
pages come before, how many distinct images there are.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest

import mmjax
from engine_fixtures import LLAVA, NEXT, load, picture

ON = mmjax.EngineConfig(page_size=8, max_num_seqs=4, max_num_batched_tokens=96, max_model_len=384)
OFF = dataclasses.replace(ON, enable_prefix_caching=False, encoder_cache_tokens=0)
PARAMS = mmjax.SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True)
INSTRUCTION = ("USER: You are a careful assistant. Look at the picture below, name every object in it, "
               "say its color and where it is, and then answer the question that follows. ")


def vqa(image_seed: int, question: str, instruction: str = "USER: ") -> dict:
    return {"prompt": f"{instruction}<image>\n{question} ASSISTANT:",
            "multi_modal_data": {"image": picture(30, 30 + image_seed % 3, seed=image_seed)}}


def calls() -> list[list[dict]]:
    """A VQA loop: a question on each of three images, then two more questions on the same images,
    and two requests with a long shared instruction before different images."""
    first = [vqa(s, "What is it?") for s in (1, 2, 3)]
    later = [vqa(s, q) for q in ("What color is it?", "Where is it?") for s in (1, 2, 3)]
    shared = [vqa(s, "Which one?", INSTRUCTION) for s in (4, 5)]
    return [first, later, shared]


def run(llm, config, batches) -> list[list[list[int]]]:
    return [[list(o.token_ids) for o in mmjax.generate(llm, batch, PARAMS, engine_config=config, use_tqdm=False)]
            for batch in batches]


@pytest.mark.parametrize("kind", [LLAVA, NEXT])
def test_greedy_tokens_are_the_same_with_every_cache_on_and_off(kind):
    without = run(load(kind, mm_processor_cache_gb=0), OFF, calls())
    llm = load(kind)  # the defaults: every cache on
    engine = llm.engine(ON)
    assert run(llm, ON, calls()) == without
    assert engine.stats["encoded_items"] == 5, "the encoder runs once per distinct image"
    stats = engine.cache_stats()
    assert stats["prefix_cache"]["hits"] > 0 and stats["processor_cache"]["hits"] == 6
    again = run(llm, ON, calls())  # everything cached now: the same tokens again
    assert again == without and engine.stats["encoded_items"] == 5


def _placeholder_offset(llm, prompt) -> int:
    return llm.process(prompt).placeholders["image"][0].offset


def test_the_same_text_before_different_images_shares_only_the_pages_before_the_image():
    llm = load(LLAVA)
    engine = llm.engine(ON)
    a, b = vqa(4, "Which one?", INSTRUCTION), vqa(5, "Which one?", INSTRUCTION)
    mmjax.generate(llm, [a], PARAMS, engine_config=ON, use_tqdm=False)
    hits = engine.scheduler.prefix_hits
    mmjax.generate(llm, [b], PARAMS, engine_config=ON, use_tqdm=False)
    offset = _placeholder_offset(llm, b)
    assert offset >= 16, "the instruction must fill whole pages before the image"
    assert engine.scheduler.prefix_hits - hits == offset // ON.page_size * ON.page_size
    hits = engine.scheduler.prefix_hits
    mmjax.generate(llm, [b], PARAMS, engine_config=ON, use_tqdm=False)  # same image, same text
    length = len(llm.process(b).token_ids)
    assert engine.scheduler.prefix_hits - hits == (length - 1) // ON.page_size * ON.page_size


def test_a_shared_page_is_the_same_physical_page_and_is_never_written_by_the_second_request():
    llm = load(LLAVA)
    engine = llm.engine(ON)
    first, second = vqa(6, "What is it?", INSTRUCTION), vqa(7, "What is it?", INSTRUCTION)
    r1 = engine.add_request(first, PARAMS)
    while not r1.finished:
        engine.step()
    r2 = engine.add_request(second, PARAMS)
    engine.step()
    shared = _placeholder_offset(llm, second) // ON.page_size
    allocator = engine.allocators[r2.replica]
    table = allocator.block_table(r2.request_id)
    cached = allocator.cached_prefix(r2.page_hashes(shared, ON.page_size))
    assert list(table[:shared]) == cached and len(cached) == shared
    k_before = np.asarray(engine.runner.kv_pages[0].k)[:, cached]  # [K, A, G, H]: pages on axis 1
    while not r2.finished:
        engine.step()
    np.testing.assert_array_equal(np.asarray(engine.runner.kv_pages[0].k)[:, cached], k_before)


def test_preemption_with_prefix_caching_gives_the_uncached_tokens():
    batch = [vqa(s, q, INSTRUCTION) for s in (8, 9) for q in ("What is it?", "Is it big?")]
    # Two sequences of ~165 tokens need 21 pages each, 16 of them shared when the image is; 23 are there:
    # the newer one is preempted, and comes back to the pages it had registered.
    small = dict(num_pages=24, max_num_seqs=2, max_num_batched_tokens=64, max_model_len=176)
    params = dataclasses.replace(PARAMS, max_tokens=24)
    without = mmjax.generate(load(LLAVA, mm_processor_cache_gb=0), batch, params,
                             engine_config=dataclasses.replace(OFF, **small), use_tqdm=False)
    llm = load(LLAVA)
    config = dataclasses.replace(ON, **small)
    engine = llm.engine(config)
    got = mmjax.generate(llm, batch, params, engine_config=config, use_tqdm=False)
    assert [list(o.token_ids) for o in got] == [list(o.token_ids) for o in without]
    assert engine.stats["preemptions"] > 0, "the small cache should force a preemption"
    assert engine.scheduler.prefix_hits > 0


def test_prompt_logprobs_requests_compute_every_prompt_token():
    llm = load(LLAVA)
    engine = llm.engine(ON)
    prompt = vqa(10, "What is it?", INSTRUCTION)
    params = dataclasses.replace(PARAMS, prompt_logprobs=1)
    mmjax.generate(llm, [prompt], PARAMS, engine_config=ON, use_tqdm=False)  # its pages are cached now
    queries = engine.scheduler.prefix_queries
    cached = mmjax.generate(llm, [prompt], params, engine_config=ON, use_tqdm=False)[0]
    assert engine.scheduler.prefix_queries == queries, "a prompt_logprobs request does not look up pages"
    fresh = mmjax.generate(load(LLAVA), [prompt], params, engine_config=OFF, use_tqdm=False)[0]
    assert len(cached.prompt_logprobs) == len(fresh.prompt_logprobs) == len(llm.process(prompt).token_ids)
    for got, want in zip(cached.prompt_logprobs[1:], fresh.prompt_logprobs[1:]):
        assert got.keys() == want.keys()
        for token in got:
            assert got[token].logprob == pytest.approx(want[token].logprob, abs=1e-5)


def test_every_cache_stays_within_its_budget_over_many_distinct_images():
    llm = load(LLAVA, mm_processor_cache_gb=20_000 / 2**30)  # ~20 kB: a few images' pixel values
    per_image = llm.process(vqa(0, "?")).num_mm_tokens
    config = dataclasses.replace(ON, num_pages=60, encoder_cache_tokens=2 * per_image)
    engine = llm.engine(config)
    arena_rows = engine.shapes.embedding_rows
    for start in range(0, 24, 4):
        mmjax.generate(llm, [vqa(100 + start + i, "What is it?") for i in range(4)], PARAMS, engine_config=config,
                       use_tqdm=False)
        stats = engine.cache_stats()
        processor = stats["processor_cache"]
        assert processor["bytes"] <= processor["capacity_bytes"] and processor["entries"] < 24
        # Idle entries may fill rows no running prompt uses; new ones evict them, so the arena never grows.
        assert stats["encoder_cache"]["rows"] <= arena_rows - 16
        assert stats["prefix_cache"]["cached_pages"] <= config.num_pages - 1
        assert engine.embedding_rows.num_held == 0
    assert stats["encoder_cache"]["misses"] == 24 and stats["encoder_cache"]["hits"] == 0
    assert stats["encoder_cache"]["entries"] < 24  # the early images were evicted
    assert all(a.num_free_pages == a.num_pages - 1 for a in engine.allocators)  # cached pages count as free


def test_caches_are_emptied_when_the_device_state_is_lost(monkeypatch):
    llm = load(LLAVA)
    engine = llm.engine(ON)
    prompt = vqa(11, "What is it?", INSTRUCTION)
    mmjax.generate(llm, [prompt], PARAMS, engine_config=ON, use_tqdm=False)
    assert engine.cache_stats()["prefix_cache"]["cached_pages"] > 0
    real = engine.runner.execute

    def lose_pages(batch):
        for x in jax.tree.leaves(engine.runner.kv_pages):
            x.delete()
        raise RuntimeError("the device lost the step")

    monkeypatch.setattr(engine.runner, "execute", lose_pages)
    out = mmjax.generate(llm, [vqa(12, "Again?")], PARAMS, engine_config=ON, use_tqdm=False, errors="return")[0]
    assert out.error is not None
    stats = engine.cache_stats()
    assert stats["prefix_cache"]["cached_pages"] == 0 and stats["encoder_cache"]["entries"] == 0
    monkeypatch.setattr(engine.runner, "execute", real)
    fresh = run(load(LLAVA, mm_processor_cache_gb=0), OFF, [[prompt]])
    assert run(llm, ON, [[prompt]]) == fresh  # recomputed from scratch, not read from lost pages


def _readme_blocks(section: str) -> list[str]:
    import pathlib
    import re

    readme = (pathlib.Path(__file__).resolve().parents[2] / "README.md").read_text()
    body = readme.split(section, 1)[1].split("\n### ", 1)[0]
    return re.findall(r"```python\n(.*?)```", body, flags=re.S)


def test_the_readme_cache_examples_run_as_written():
    stats_block, ids_block = _readme_blocks("### Caches: the same image, the same prefix, computed once")
    llm = load(LLAVA)
    llm.engine(ON)
    namespace = {"llm": llm, "image": picture(30, 31, seed=13), "print": lambda *a: None}
    exec(stats_block, namespace)
    assert namespace["engine"].cache_stats()["prefix_cache"]["cached_pages"] == 0  # reset_caches() ran
    exec(ids_block, namespace)
    first, later = namespace["first"], namespace["later"]
    by_id = run(llm, ON, [[first], [later]])
    hashed = {**later, "multi_modal_data": {"image": namespace["image"]}}
    hashed.pop("multi_modal_uuids")
    assert by_id == run(load(LLAVA, mm_processor_cache_gb=0), OFF, [[first], [hashed]])
    with pytest.raises(mmjax.PromptError, match="its id 'photo-17' names no cached image item"):
        mmjax.generate(load(LLAVA), [later], PARAMS, engine_config=ON, use_tqdm=False)


def test_precomputed_embeddings_are_keyed_by_their_values():
    # vLLM once hit 0 % with precomputed embeddings; here an array is hashed by dtype, shape and values.
    import jax.numpy as jnp

    llm = load(LLAVA)
    engine = llm.engine(ON)
    pixels = llm.process(vqa(14, "?")).mm_kwargs["pixel_values"]
    embeds = np.asarray(llm.model.image_features(jnp.asarray(pixels))[0])  # [P, D]
    prompt = {"prompt": INSTRUCTION + "<image>\nWhat is it? ASSISTANT:", "multi_modal_data": {"image": embeds}}
    other = {**prompt, "multi_modal_data": {"image": embeds + 1.0}}
    first = run(llm, ON, [[prompt]])
    hits = engine.scheduler.prefix_hits
    again = run(llm, ON, [[{**prompt, "multi_modal_data": {"image": embeds.copy()}}]])
    length = len(llm.process(prompt).token_ids)
    assert engine.scheduler.prefix_hits - hits == (length - 1) // ON.page_size * ON.page_size
    hits = engine.scheduler.prefix_hits
    changed = run(llm, ON, [[other]])
    assert engine.scheduler.prefix_hits - hits == _placeholder_offset(llm, other) // ON.page_size * ON.page_size
    fresh = load(LLAVA, mm_processor_cache_gb=0)
    assert first == again == run(fresh, OFF, [[prompt]]) and changed == run(fresh, OFF, [[other]])
