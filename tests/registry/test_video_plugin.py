"""VideoPlugin: vLLM's video forms, the checks that refuse bad videos before any work, limits per prompt."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from flax import nnx
from PIL import Image

from mmjax.registry import (
    MULTIMODAL_REGISTRY,
    ModelConfig,
    SupportsMultiModal,
    UnsupportedModalityError,
    VideoItem,
    VideoPlugin,
    process_prompt,
)
from mmjax.registry.video import DEFAULT_MAX_VIDEO_TOKENS
from toy_video_vlm import CALLS, SEEN, VIDEO_TOKEN, ToyVideoVLM


def video(frames: int = 3, height: int = 4, width: int = 5, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (frames, height, width, 3), dtype=np.uint8)


def pil_frames(array: np.ndarray) -> list[Image.Image]:
    return [Image.fromarray(frame) for frame in array]


@pytest.fixture
def config(checkpoint_dir) -> ModelConfig:
    return ModelConfig.from_pretrained(checkpoint_dir, model_cls=ToyVideoVLM, limit_mm_per_prompt={"video": 2})


@pytest.fixture(autouse=True)
def reset_calls():
    CALLS.update(mapper=0, processor=0)
    SEEN.clear()


def prompt(data: object, markers: int = 1, **extra) -> dict:
    return {"prompt_token_ids": [1, *[VIDEO_TOKEN] * markers, 7], "multi_modal_data": {"video": data}, **extra}


def test_the_video_plugin_is_a_default_plugin():
    assert isinstance(MULTIMODAL_REGISTRY.plugins["video"], VideoPlugin)


def test_one_array_becomes_one_video_item_seen_by_the_hooks(config):
    frames = video(3)
    out = process_prompt(config, prompt(frames))
    assert [item.frames is frames for item in SEEN] == [True]  # not copied
    assert SEEN[0].fps is None and SEEN[0].metadata == {}
    np.testing.assert_allclose(out.mm_kwargs["video_frame_means"], frames.reshape(3, -1, 3).mean(1), rtol=1e-6)
    assert np.isnan(out.mm_kwargs["video_fps"]).all()
    assert [r.length for r in out.placeholders["video"]] == [3]


def test_frames_with_their_fps_as_vllm_passes_them(config):
    out = process_prompt(config, prompt((video(3), {"fps": 29.97})))
    assert SEEN[0].fps == pytest.approx(29.97) and isinstance(SEEN[0], VideoItem)
    np.testing.assert_allclose(out.mm_kwargs["video_fps"], [29.97])


def test_vllm_loader_metadata_keys_are_accepted_and_only_fps_kept(config):
    metadata = {"fps": 24, "total_num_frames": 90, "frames_indices": [0, 30, 60], "duration": 3.75,
                "video_backend": "opencv", "do_sample_frames": False}
    process_prompt(config, prompt((video(3), metadata)))
    assert dict(SEEN[0].metadata) == {"fps": 24.0}


def test_a_list_of_pil_images_is_one_video_equal_to_its_array(config):
    frames = video(4)
    from_pil = process_prompt(config, prompt(pil_frames(frames)))
    np.testing.assert_array_equal(SEEN[0].frames, frames)
    from_array = process_prompt(config, prompt(frames))
    np.testing.assert_array_equal(from_pil.mm_kwargs["video_frame_means"], from_array.mm_kwargs["video_frame_means"])
    assert from_pil.mm_keys == from_array.mm_keys  # the same content, the same key


def test_grey_pil_frames_are_converted_to_rgb(config):
    grey = [Image.fromarray(np.full((4, 5), 9 * i, np.uint8), "L") for i in range(2)]
    process_prompt(config, prompt(grey))
    assert SEEN[0].frames.shape == (2, 4, 5, 3) and (SEEN[0].frames[1] == 9).all()


@pytest.mark.parametrize("several", [
    lambda a, b: [a, b],
    lambda a, b: [(a, {"fps": 10.0}), pil_frames(b)],
    lambda a, b: np.stack([a, b]),  # [V, F, H, W, 3]
])
def test_several_videos_in_one_prompt(config, several):
    a, b = video(3, seed=1), video(3, seed=2)
    out = process_prompt(config, prompt(several(a, b), markers=2))
    assert len(SEEN) == 2
    np.testing.assert_array_equal(SEEN[0].frames, a)
    np.testing.assert_array_equal(SEEN[1].frames, b)
    assert [r.length for r in out.placeholders["video"]] == [3, 3]
    assert len(out.mm_keys["video"]) == 2 and out.mm_keys["video"][0] != out.mm_keys["video"][1]


@pytest.mark.parametrize("data, error, message", [
    (video().astype(np.float32), ValueError, r"video 0 has dtype float32; expected uint8"),
    (video()[0], ValueError, r"video 0 has shape \(4, 5, 3\) \(rank 3\); expected \[frames, height, width, 3\] "
                             r"\(rank 4\) \(one frame\? add a leading frame axis\)"),
    (np.zeros((2, 4, 5, 4), np.uint8), ValueError, r"video 0 has 4 channels \(shape \(2, 4, 5, 4\)\); expected 3"),
    (np.zeros((0, 4, 5, 3), np.uint8), ValueError, r"video 0 has 0 frames; a video needs at least one"),
    (np.zeros((2, 0, 5, 3), np.uint8), ValueError, r"video 0 has frames of size 5x0; expected at least 1x1"),
    ((video(), {"fps": float("nan")}), ValueError, r"video 0: metadata fps must be a finite number > 0 .*got nan"),
    ((video(), {"fps": float("inf")}), ValueError, r"video 0: metadata fps must be a finite number > 0 .*got inf"),
    ((video(), {"fps": -30}), ValueError, r"video 0: metadata fps must be a finite number > 0 .*got -30"),
    ((video(), {"fps": 0}), ValueError, r"video 0: metadata fps must be a finite number > 0 .*got 0"),
    ((video(), {"fps": True}), ValueError, r"video 0: metadata fps must be a finite number > 0 .*got True"),
    ((video(), {"FPS": 30}), ValueError, r"video 0: unknown metadata key\(s\) \['FPS'\]; mmjax uses 'fps'"),
    ([Image.new("RGB", (5, 4)), Image.new("RGB", (6, 4))], ValueError,
     r"video 0: frame 1 is 6x4 but frame 0 is 5x4; all frames of a video must have one size"),
    ([video(), video().astype(np.int16)], ValueError, r"video 1 has dtype int16; expected uint8"),
    ([], ValueError, r"empty list of video items"),
    ("clip.mp4", TypeError, r"video 0 is a str; expected a uint8 numpy array \[frames, height, width, 3\], a list "
                            r"of PIL images, or either with its metadata"),
    ((video(), {"fps": 30}, "extra"), TypeError, r"video 0: a video with metadata is a pair \(frames, "),
    ((video(), 30), TypeError, r"video 0: a video with metadata is a pair .*whose second is int"),
])
def test_bad_videos_are_refused_by_name_before_any_work(config, data, error, message):
    with pytest.raises(error, match=message):
        process_prompt(config, prompt(data))
    with pytest.raises(error, match=message):
        MULTIMODAL_REGISTRY.map_input(config, {"video": data})
    assert CALLS == {"mapper": 0, "processor": 0}


def test_too_many_videos_per_prompt_while_a_list_of_frames_counts_once(config):
    one = dataclasses.replace(config, limit_mm_per_prompt={"video": 1})
    process_prompt(one, prompt(pil_frames(video(5))))  # five frames, one video
    CALLS.update(mapper=0, processor=0)
    with pytest.raises(ValueError, match=r"ToyVideoVLM .*at most 1 video item\(s\), but 2 were given"):
        process_prompt(one, prompt([video(), video()], markers=2))
    with pytest.raises(ValueError, match=r"at most 1 video item\(s\), but 3 were given"):
        MULTIMODAL_REGISTRY.map_input(one, {"video": np.zeros((3, 2, 4, 5, 3), np.uint8)})
    off = dataclasses.replace(config, limit_mm_per_prompt={"video": 0})
    with pytest.raises(ValueError, match=r"at most 0 video item\(s\) \(the modality is disabled\), but 1"):
        process_prompt(off, prompt(video()))
    assert CALLS == {"mapper": 0, "processor": 0}
    assert MULTIMODAL_REGISTRY.get_max_multimodal_tokens(off) == 25  # the one image only


def test_a_model_that_takes_no_video_refuses_one_clearly(model_config):
    message = (r"no input mapper for 'video' is registered for ToyVLM .*: the model takes no video input, but "
               r"multi_modal_data has 'video'")
    for call in (lambda: process_prompt(model_config, prompt(video())),
                 lambda: process_prompt(model_config, prompt("not even a video")),  # refused before it is read
                 lambda: MULTIMODAL_REGISTRY.map_input(model_config, {"video": video()})):
        with pytest.raises(UnsupportedModalityError, match=message) as info:
            call()
        assert isinstance(info.value, KeyError) and isinstance(info.value, ValueError)
    assert not MULTIMODAL_REGISTRY.takes_modality(model_config, "video")
    assert MULTIMODAL_REGISTRY.get_max_tokens_per_item_by_modality(model_config)["video"] == 0


def test_registering_without_a_mapper_refuses_at_use_and_max_tokens_default_to_vllms(checkpoint_dir):
    @MULTIMODAL_REGISTRY.register_input_mapper("video")
    @MULTIMODAL_REGISTRY.register_max_multimodal_tokens("video")
    class NoVideoMapper(nnx.Module, SupportsMultiModal):
        pass

    config = ModelConfig.from_pretrained(checkpoint_dir, model_cls=NoVideoMapper)
    assert MULTIMODAL_REGISTRY.takes_modality(config, "video")
    with pytest.raises(ValueError, match=r"NoVideoMapper .*registers no video mapper of its own, and mmjax has no "
                                         r"default one .*register_input_mapper\('video', mapper\)"):
        MULTIMODAL_REGISTRY.map_input(config, {"video": video()})
    assert MULTIMODAL_REGISTRY.get_max_tokens_per_item_by_modality(config)["video"] == DEFAULT_MAX_VIDEO_TOKENS == 4096


def test_one_video_given_as_frames_takes_one_id(config):
    frames = pil_frames(video(3))
    out = process_prompt(config, prompt(frames, multi_modal_uuids={"video": "clip-1"}))
    assert len(out.mm_keys["video"]) == 1
