"""The processor cache and ``multi_modal_uuids``: mapped inputs kept by content, items by the user's id."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from PIL import Image

from mmjax.registry import MULTIMODAL_REGISTRY, ProcessorCache, item_key, process_prompt
from mmjax.registry.processor_cache import nbytes_of

PROMPT = "USER: <image>\nWhat is shown in this image? ASSISTANT:"


class CountingRegistry:
    """The default registry, counting the items mapped (the work the cache must save): ``map_item``
    calls, and the items of ``map_input`` calls."""

    def __init__(self):
        self.calls = 0

    def __getattr__(self, name):
        return getattr(MULTIMODAL_REGISTRY, name)

    def map_item(self, *args, **kwargs):
        self.calls += 1
        return MULTIMODAL_REGISTRY.map_item(*args, **kwargs)

    def map_input(self, model_config, data, *args, **kwargs):
        self.calls += sum(MULTIMODAL_REGISTRY.count_items(key, value) for key, value in data.items())
        return MULTIMODAL_REGISTRY.map_input(model_config, data, *args, **kwargs)


def _process(model_config, prompt, cache, registry=MULTIMODAL_REGISTRY):
    return process_prompt(model_config, prompt, mm_registry=registry, processor_cache=cache)


def _image(seed: int, size=(40, 30)) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def test_the_same_image_is_mapped_once_and_gives_identical_inputs(model_config):
    cache, registry = ProcessorCache(2**24), CountingRegistry()
    first = _process(model_config, {"prompt": PROMPT, "multi_modal_data": {"image": _image(0)}}, cache, registry)
    again = _process(model_config, {"prompt": "<image> again", "multi_modal_data": {"image": _image(0)}},
                     cache, registry)  # an equal image, another object
    other = _process(model_config, {"prompt": PROMPT, "multi_modal_data": {"image": _image(1)}}, cache, registry)
    assert registry.calls == 2
    assert cache.stats()["hits"] == 1 and cache.stats()["misses"] == 2
    uncached = process_prompt(model_config, {"prompt": PROMPT, "multi_modal_data": {"image": _image(0)}})
    for out in (first, again):
        np.testing.assert_array_equal(out.mm_items["image"][0]["pixel_values"], uncached.mm_kwargs["pixel_values"])
    assert first.mm_keys == again.mm_keys != other.mm_keys


def test_the_key_covers_the_kwargs_in_effect(model_config):
    config = dataclasses.replace(model_config, mm_processor_kwargs={"rescale_factor": 0.5})
    image = _image(0)
    plain = process_prompt(model_config, {"prompt": PROMPT, "multi_modal_data": {"image": image}})
    default = process_prompt(config, {"prompt": PROMPT, "multi_modal_data": {"image": image}})
    overridden = process_prompt(config, {"prompt": PROMPT, "multi_modal_data": {"image": image},
                                         "mm_processor_kwargs": {"rescale_factor": 0.25}})
    same = process_prompt(model_config, {"prompt": PROMPT, "multi_modal_data": {"image": image},
                                         "mm_processor_kwargs": {"rescale_factor": 0.5}})
    assert len({plain.mm_keys["image"], default.mm_keys["image"], overridden.mm_keys["image"]}) == 3
    assert same.mm_keys == default.mm_keys  # the same kwargs in effect, however they were given
    assert item_key("image", "x", {"a": 1, "b": [1, 2]}) == item_key("image", "x", {"b": [1, 2], "a": 1})


def test_an_item_sent_with_an_id_can_be_sent_as_the_id_alone(model_config):
    cache, registry = ProcessorCache(2**24), CountingRegistry()
    image = _image(5)
    with_data = _process(model_config, {"prompt": PROMPT, "multi_modal_data": {"image": image},
                                        "multi_modal_uuids": {"image": "photo-5"}}, cache, registry)
    id_only = _process(model_config, {"prompt": PROMPT, "multi_modal_data": {"image": None},
                                      "multi_modal_uuids": {"image": "photo-5"}}, cache, registry)
    assert registry.calls == 1
    np.testing.assert_array_equal(with_data.token_ids, id_only.token_ids)
    np.testing.assert_array_equal(with_data.mm_items["image"][0]["pixel_values"],
                                  id_only.mm_items["image"][0]["pixel_values"])
    assert with_data.mm_keys == id_only.mm_keys
    hashed = process_prompt(model_config, {"prompt": PROMPT, "multi_modal_data": {"image": image}})
    assert hashed.mm_keys != with_data.mm_keys  # an id replaces the content hash


def test_items_are_mapped_and_cached_one_by_one(model_config):
    """The item is the unit: a prompt that adds an image to an earlier prompt's maps only the new one; each
    of ``mm_items`` is its item mapped alone, and ``mm_kwargs`` is every item mapped together."""
    config = dataclasses.replace(model_config, limit_mm_per_prompt={"image": 2})
    cache, registry = ProcessorCache(2**24), CountingRegistry()
    _process(config, {"prompt": PROMPT, "multi_modal_data": {"image": _image(0)}}, cache, registry)
    both = {"prompt": "USER: <image> <image>\nCompare. ASSISTANT:",
            "multi_modal_data": {"image": [_image(1), _image(0)]}}
    out = _process(config, both, cache, registry)
    assert registry.calls == 2 and cache.stats()["hits"] == 1  # the new image only
    for item, seed in zip(out.mm_items["image"], (1, 0)):
        alone = MULTIMODAL_REGISTRY.map_input(config, {"image": _image(seed)})
        np.testing.assert_array_equal(item["pixel_values"], alone["pixel_values"])
    together = MULTIMODAL_REGISTRY.map_input(config, {"image": [_image(1), _image(0)]})
    np.testing.assert_array_equal(out.mm_kwargs["pixel_values"], together["pixel_values"])
    assert registry.calls == 4  # mm_kwargs mapped both when first read


def test_an_id_that_names_nothing_cached_is_a_clear_error(model_config):
    prompt = {"prompt": PROMPT, "multi_modal_data": {"image": None}, "multi_modal_uuids": {"image": "never-sent"}}
    with pytest.raises(ValueError, match=r"multi_modal_data\['image'\] is None and its id 'never-sent' names no "
                                         r"cached image item: the processor cache does not hold it"):
        _process(model_config, prompt, ProcessorCache(2**20))
    with pytest.raises(ValueError, match=r"processor cache is disabled \(mm_processor_cache_gb=0\)"):
        _process(model_config, prompt, ProcessorCache(0))
    with pytest.raises(ValueError, match=r"multi_modal_data\['image'\] is None and multi_modal_uuids gives it no id"):
        _process(model_config, {"prompt": PROMPT, "multi_modal_data": {"image": None}}, ProcessorCache(2**20))


@pytest.mark.parametrize("uuids, error, message", [
    ("photo", TypeError, r"'multi_modal_uuids' must be a dict"),
    ({"audio": "a"}, ValueError, r"multi_modal_uuids has 'audio' but multi_modal_data has no 'audio' key"),
    ({"image": ["a", "b"]}, ValueError, r"must give one id per image item: the data holds 1 item\(s\)"),
    ({"image": 7}, TypeError, r"multi_modal_uuids\['image'\]\[0\] must be a non-empty str or None, got 7"),
    ({"image": ""}, TypeError, r"must be a non-empty str or None, got ''"),
])
def test_malformed_ids(model_config, uuids, error, message):
    with pytest.raises(error, match=message):
        process_prompt(model_config, {"prompt": PROMPT, "multi_modal_data": {"image": _image(0)},
                                      "multi_modal_uuids": uuids})


def test_the_cache_stays_within_its_budget_least_recently_used_first():
    arrays = {i: np.zeros(1000, np.uint8) for i in range(6)}
    cache = ProcessorCache(3500)
    for i in range(3):
        cache.put(i, arrays[i])
    cache.get(0)  # 0 is now the most recently used: 1 goes first
    cache.put(3, arrays[3])
    assert cache.get(1) is None and cache.get(0) is arrays[0] and cache.get(2) is arrays[2]
    for i in range(3, 6):
        cache.put(i, arrays[i])
        assert cache.stats()["bytes"] <= 3500
    cache.put("huge", np.zeros(5000, np.uint8))  # larger than the whole budget: not kept
    assert cache.get("huge") is None and cache.stats()["entries"] == 3
    assert nbytes_of(Image.new("RGB", (10, 20))) == 600 and nbytes_of({"a": [np.zeros(3, np.float32)]}) == 12
    with pytest.raises(ValueError, match="mm_processor_cache_gb must be a number >= 0"):
        ProcessorCache.from_gb(-1)
