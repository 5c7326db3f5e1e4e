"""Video ceilings (frames, pixels: the model's, a request may only lower them) and the videos' cache keys."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from PIL import Image

from mmjax.registry import (
    ModelConfig,
    MultiModalRegistry,
    ProcessorCache,
    VideoCeilings,
    VideoPlugin,
    hash_item,
    process_prompt,
)
from mmjax.registry.audio import AudioPlugin
from mmjax.registry.image import ImagePlugin
from mmjax.registry.video_limits import DEFAULT_MAX_VIDEO_FRAMES, DEFAULT_MAX_VIDEO_PIXELS
from toy_video_vlm import CALLS, VIDEO_TOKEN, ToyVideoVLM

CEILINGS = {"max_video_frames": 6, "max_video_pixels": 6 * 4 * 5}


def video(frames: int = 3, height: int = 4, width: int = 5, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (frames, height, width, 3), dtype=np.uint8)


def config_with(checkpoint_dir, **mm_processor_kwargs) -> ModelConfig:
    return ModelConfig.from_pretrained(checkpoint_dir, model_cls=ToyVideoVLM, limit_mm_per_prompt={"video": 2},
                                       mm_processor_kwargs=mm_processor_kwargs)


def prompt(data: object, markers: int = 1, **extra) -> dict:
    return {"prompt_token_ids": [1, *[VIDEO_TOKEN] * markers, 7], "multi_modal_data": {"video": data}, **extra}


@pytest.fixture(autouse=True)
def reset_calls():
    CALLS.update(mapper=0, processor=0)


def test_the_models_ceilings_refuse_a_video_before_any_work(checkpoint_dir):
    config = config_with(checkpoint_dir, **CEILINGS)
    process_prompt(config, prompt(video(6)))  # at the ceiling: fine
    CALLS.update(mapper=0, processor=0)
    with pytest.raises(ValueError, match=r"video 1 has 7 frames; at most 6 are allowed \(mm_processor_kwargs "
                                         r"max_video_frames\)"):
        process_prompt(config, prompt([video(2), video(7)], markers=2))
    with pytest.raises(ValueError, match=r"video 0 has 2 x 8 x 10 = 160 pixels; at most 120 are allowed "
                                         r"\(mm_processor_kwargs max_video_pixels\)"):
        process_prompt(config, prompt((video(2, 8, 10), {"fps": 3})))
    assert CALLS == {"mapper": 0, "processor": 0}


def test_a_request_may_lower_the_ceilings_never_raise_them(checkpoint_dir):
    config = config_with(checkpoint_dir, **CEILINGS)
    with pytest.raises(ValueError, match=r"video 0 has 4 frames; at most 3 are allowed"):
        process_prompt(config, prompt(video(4), mm_processor_kwargs={"max_video_frames": 3}))
    with pytest.raises(ValueError, match=r"video 0 has 4 x 4 x 5 = 80 pixels; at most 79 are allowed"):
        process_prompt(config, prompt(video(4), mm_processor_kwargs={"max_video_pixels": 79}))
    with pytest.raises(ValueError, match=r"mm_processor_kwargs max_video_frames=7 is above the model's ceiling "
                                         r"\(6\); a request may only lower it"):
        process_prompt(config, prompt(video(4), mm_processor_kwargs={"max_video_frames": 7}))
    assert CALLS == {"mapper": 0, "processor": 0}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the ceilings are kwargs the registry takes: no "dropped" warning
        process_prompt(config, prompt(video(4), mm_processor_kwargs={"max_video_frames": 4}))


@pytest.mark.parametrize("bad", [0, -1, 2.5, "8", True])
def test_ceilings_must_be_positive_ints(checkpoint_dir, bad):
    with pytest.raises(ValueError, match=rf"the request's mm_processor_kwargs max_video_frames must be an int >= 1, "
                                         rf"got {bad!r}"):
        process_prompt(config_with(checkpoint_dir), prompt(video(), mm_processor_kwargs={"max_video_frames": bad}))
    with pytest.raises(ValueError, match=rf"the model's mm_processor_kwargs max_video_pixels must be an int >= 1, "
                                         rf"got {bad!r}"):
        process_prompt(config_with(checkpoint_dir, max_video_pixels=bad), prompt(video()))


def test_without_model_settings_the_plugins_ceilings_apply(checkpoint_dir):
    assert VideoCeilings() == VideoCeilings(DEFAULT_MAX_VIDEO_FRAMES, DEFAULT_MAX_VIDEO_PIXELS)
    registry = MultiModalRegistry(plugins=(ImagePlugin(), AudioPlugin(), VideoPlugin(VideoCeilings(2, 1000))))
    config = config_with(checkpoint_dir)
    with pytest.raises(ValueError, match=r"video 0 has 3 frames; at most 2 are allowed"):
        registry.map_input(config, {"video": video(3)})
    raised = config_with(checkpoint_dir, max_video_frames=3)  # the model config's setting wins over the plugin's
    assert registry.map_input(raised, {"video": video(3)})["video_frame_means"].shape == (3, 3)


# -- cache keys ---------------------------------------------------------------------------------


def test_a_video_hashes_by_frames_and_fps_whatever_its_form():
    frames = video(4)
    same = [(frames, {}), (frames.copy(), {"fps": None}), [Image.fromarray(f) for f in frames],
            (frames, {"total_num_frames": 90, "frames_indices": [0, 1, 2, 3]})]
    assert len({hash_item(v) for v in same}) == 1
    changed = frames.copy()
    changed[2, 1, 3, 0] ^= 1  # one value of one frame
    others = [(changed, {}), (frames, {"fps": 30.0}), (frames, {"fps": 25.0}), (frames[:3], {}), frames]
    assert len({hash_item(v) for v in [same[0], *others]}) == 1 + len(others)  # a bare array hashes as an array
    assert hash_item((frames, {"fps": 30})) == hash_item((frames, {"fps": 30.0}))


def test_item_keys_per_video_follow_frames_fps_and_kwargs(checkpoint_dir):
    config = config_with(checkpoint_dir)
    a, b = video(3, seed=1), video(3, seed=2)
    b_changed = b.copy()
    b_changed[0, 0, 0, 0] ^= 1

    def keys(data, **extra):
        return process_prompt(config, prompt(data, markers=2, **extra)).mm_keys["video"]

    base = keys([a, b])
    assert keys([a.copy(), b.copy()]) == base
    assert keys([a, b_changed])[0] == base[0] and keys([a, b_changed])[1] != base[1]  # per video
    assert keys([(a, {"fps": 2.0}), b])[0] != base[0]
    assert keys([b, a]) == base[::-1]
    assert keys([a, b], mm_processor_kwargs={"max_video_frames": 5}) != base  # the kwargs in effect are keyed


def test_the_processor_cache_maps_the_same_videos_once(checkpoint_dir):
    config, cache = config_with(checkpoint_dir), ProcessorCache(2**24)
    first = process_prompt(config, prompt((video(5), {"fps": 8.0})), processor_cache=cache)
    again = process_prompt(config, prompt(([Image.fromarray(f) for f in video(5)], {"fps": 8})), processor_cache=cache)
    assert CALLS["mapper"] == 1
    [[first_video], [again_video]] = first.mm_items["video"], again.mm_items["video"]
    np.testing.assert_array_equal(first_video["video_frame_means"], again_video["video_frame_means"])
    process_prompt(config, prompt((video(5), {"fps": 9.0})), processor_cache=cache)
    assert CALLS["mapper"] == 2
