"""``cache_salt`` keys all three caches: prompts of different salts share no mapped input, no encoder
output and no KV page (so no tenant can time another's images or prompts), the same salt shares them
as before, and the answers never depend on the salt."""

from __future__ import annotations

import mmjax
import pytest

from mmjax.registry.item_keys import item_key
from tests.engine.engine_fixtures import LLAVA, load, picture

CONFIG = mmjax.EngineConfig(page_size=8, max_num_seqs=2, max_num_batched_tokens=1024, max_model_len=1024)
PARAMS = mmjax.SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True)


@pytest.fixture(scope="module")
def llm():
    return load(LLAVA)


def _prompt(salt: str | None, seed: int = 5) -> dict:
    prompt = {"prompt": "USER: <image>\nDescribe this picture in a few careful words, please. ASSISTANT:",
              "multi_modal_data": {"image": picture(30, 30, seed)}}
    return prompt if salt is None else {**prompt, "cache_salt": salt}


def _run(engine, prompt: dict) -> tuple[list[int], dict]:
    """One request to completion on ``engine``; its tokens and the cache counters it moved."""
    before = engine.cache_stats()
    request = engine.add_request(prompt, PARAMS)
    while engine.has_unfinished_requests():
        engine.step()
    after = engine.cache_stats()
    moved = {f"{cache}.{key}": after[cache][key] - before[cache][key]
             for cache in ("prefix_cache", "encoder_cache", "processor_cache") for key in ("hits",)}
    return list(request.output_token_ids), moved


def test_the_salt_is_part_of_an_items_key():
    assert item_key("image", "abc", {}) == item_key("image", "abc", {})
    assert item_key("image", "abc", {}, "tenant-a") != item_key("image", "abc", {})
    assert item_key("image", "abc", {}, "tenant-a") != item_key("image", "abc", {}, "tenant-b")
    assert item_key("image", "abc", {}, "tenant-a") == item_key("image", "abc", {}, "tenant-a")


def test_different_salts_share_no_cache_and_the_same_salt_shares_all(llm):
    engine = llm.engine(CONFIG)
    llm.processor_cache.clear()
    first, moved = _run(engine, _prompt("tenant-a"))
    assert moved == {"prefix_cache.hits": 0, "encoder_cache.hits": 0, "processor_cache.hits": 0}
    other, moved = _run(engine, _prompt("tenant-b"))
    assert moved == {"prefix_cache.hits": 0, "encoder_cache.hits": 0, "processor_cache.hits": 0}
    unsalted, moved = _run(engine, _prompt(None))
    assert moved == {"prefix_cache.hits": 0, "encoder_cache.hits": 0, "processor_cache.hits": 0}
    again, moved = _run(engine, _prompt("tenant-a"))
    assert moved["prefix_cache.hits"] > 0 and moved["processor_cache.hits"] > 0
    assert first == other == unsalted == again  # the salt changes what is shared, never the answer


def test_the_encoder_cache_is_salted_when_no_page_is_shared(llm):
    """A prompt whose placeholders start on its first page finds no cached page, so the encoder cache
    alone decides whether the image is encoded again."""
    engine = llm.engine(CONFIG)
    def image_first(salt: str, text: str) -> dict:
        return {"prompt": f"<image>\n{text}", "multi_modal_data": {"image": picture(30, 30, 9)}, "cache_salt": salt}

    _run(engine, image_first("tenant-a", "USER: What is it? ASSISTANT:"))
    _, moved = _run(engine, image_first("tenant-b", "USER: What is it? ASSISTANT:"))
    assert moved["encoder_cache.hits"] == 0
    _, moved = _run(engine, image_first("tenant-a", "USER: What is it? ASSISTANT:"))
    assert moved["encoder_cache.hits"] + moved["prefix_cache.hits"] > 0


def test_a_salt_must_be_a_non_empty_string(llm):
    with pytest.raises(TypeError, match="'cache_salt' must be a non-empty str"):
        llm.process({"prompt": "hi", "cache_salt": ""})
    with pytest.raises(TypeError, match="'cache_salt' must be a non-empty str, got int"):
        llm.process({"prompt": "hi", "cache_salt": 7})
