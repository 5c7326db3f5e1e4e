"""Qwen2.5-VL with videos: logits equal transformers' for a video, and for an image and a video in one prompt;
placeholder counts and M-RoPE time positions equal transformers' video processor and ``get_rope_index``.

The reference pixels come from transformers' own ``Qwen2VLVideoProcessor`` (run here through the test-only
torchvision stand-in of ``tests/processing/qwen_reference.py``), on the checkpoint's video config.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

import mmjax
from mmjax.engine import count_compilations
from tests.processing.qwen_reference import run_video_processor, video_processor
from tiny_qwen import IMAGE, chat, checkpoint, picture, reference, relative_error

VIDEO = "<|vision_start|><|video_pad|><|vision_end|>"


@pytest.fixture(scope="module")
def llm():
    return mmjax.load(checkpoint(), limit_mm_per_prompt={"image": 2, "video": 2}, max_model_len=2048)


def clip(frames: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (frames, height, width, 3), dtype=np.uint8)


def reference_video(frames: np.ndarray, fps: float | None) -> dict:
    with open(os.path.join(checkpoint(), "video_preprocessor_config.json")) as f:
        settings = {k: v for k, v in json.load(f).items() if not k.endswith(("_type", "_class"))}
    return run_video_processor(video_processor("qwen2_vl", **settings), frames, fps)


def reference_logits(llm, prompt, video: dict, images: list | None = None) -> tuple[np.ndarray, dict]:
    model, image_processor = reference()
    ids = torch.tensor(np.asarray(llm.process(prompt).token_ids))[None].long()
    types = (ids == model.config.image_token_id).int() + 2 * (ids == model.config.video_token_id).int()
    inputs = {"input_ids": ids, "mm_token_type_ids": types, "pixel_values_videos": video["pixel_values_videos"],
              "video_grid_thw": video["video_grid_thw"],
              "second_per_grid_ts": torch.tensor(video_second_per_grid(video), dtype=torch.float32)}
    if images:
        pixels = image_processor(images=images, return_tensors="pt")
        inputs.update(pixel_values=pixels["pixel_values"], image_grid_thw=pixels["image_grid_thw"])
    with torch.no_grad():
        return model(**inputs).logits[0].numpy(), inputs


def video_second_per_grid(video: dict) -> list[float]:
    """transformers' Qwen2.5-VL processor: temporal_patch_size / the sampled fps of each video's metadata."""
    return [2 / metadata.sampled_fps for metadata in video["video_metadata"]]


@pytest.mark.parametrize("frames, height, width, fps", [(8, 56, 84, 2.0), (5, 90, 40, None), (4, 30, 30, 24.0)])
def test_video_logits_equal_transformers(llm, frames, height, width, fps):
    video = clip(frames, height, width)
    data = video if fps is None else (video, {"fps": fps})
    prompt = {"prompt": chat(f"{VIDEO}What happens?"), "multi_modal_data": {"video": data}}
    ref, inputs = reference_logits(llm, prompt, reference_video(video, fps))
    processed = llm.process(prompt)
    assert processed.placeholders["video"][0].length == int(inputs["video_grid_thw"][0].prod()) // 4
    want, delta = reference()[0].model.get_rope_index(inputs["input_ids"], inputs["mm_token_type_ids"],
                                                      video_grid_thw=inputs["video_grid_thw"],
                                                      second_per_grid_ts=inputs["second_per_grid_ts"])
    np.testing.assert_array_equal(processed.rope_positions, want[:, 0].numpy())
    assert processed.rope_delta == int(delta[0, 0])
    _, ours = llm.logits(prompt)
    assert relative_error(ours, ref) < 1e-5


def test_an_image_and_a_video_in_one_prompt(llm):
    video, image = clip(6, 64, 48, seed=1), picture(70, 100, seed=2)
    prompt = {"prompt": chat(f"{VIDEO} and then {IMAGE}: same place?"),
              "multi_modal_data": {"video": (video, {"fps": 3.0}), "image": image}}
    ref, _ = reference_logits(llm, prompt, reference_video(video, 3.0), images=[image])
    _, ours = llm.logits(prompt)
    assert relative_error(ours, ref) < 1e-5


def test_an_image_and_a_video_through_the_engine_equal_transformers_greedy(llm):
    """The engine's rows (images', then videos') and positions give transformers' greedy tokens."""
    video, image = clip(6, 64, 48, seed=3), picture(90, 60, seed=4)
    prompt = {"prompt": chat(f"{IMAGE} beside {VIDEO}?"), "multi_modal_data": {"video": video, "image": image}}
    params = mmjax.SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True)
    config = mmjax.EngineConfig(page_size=8, max_num_seqs=2, max_num_batched_tokens=32, max_model_len=512)
    tokens = list(mmjax.generate(llm, prompt, params, engine_config=config, use_tqdm=False)[0].token_ids)
    _, inputs = reference_logits(llm, prompt, reference_video(video, None), images=[image])
    model, want = reference()[0], []
    for _ in range(4):  # transformers' greedy, one full forward per token
        ids = torch.cat([inputs["input_ids"], torch.tensor([want], dtype=torch.long).reshape(1, -1)], dim=1)
        types = torch.cat([inputs["mm_token_type_ids"], torch.zeros((1, len(want)), dtype=torch.int)], dim=1)
        with torch.no_grad():
            logits = model(**{**inputs, "input_ids": ids, "mm_token_type_ids": types}).logits[0, -1]
        want.append(int(logits.argmax()))
    assert tokens == want


def test_video_input_errors_are_named(llm):
    with pytest.raises(ValueError, match=r"video 0 has dtype float32; expected uint8"):
        llm.process({"prompt": VIDEO, "multi_modal_data": {"video": np.zeros((4, 8, 8, 3), np.float32)}})
    with pytest.raises(ValueError, match=r"1 video placeholder token.*but 2 video\(s\) were given"):
        llm.process({"prompt": VIDEO, "multi_modal_data": {"video": [clip(4, 28, 28), clip(4, 28, 28)]}})
    with pytest.raises(ValueError, match=r"video_max_pixels=\d+ is above the model's per-frame budget"):
        llm.process({"prompt": VIDEO, "multi_modal_data": {"video": clip(4, 28, 28)},
                     "mm_processor_kwargs": {"video_max_pixels": 10**9}})


def test_nothing_compiles_after_warmup_for_new_frame_counts_sizes_and_mixes():
    llm = mmjax.load(checkpoint(), limit_mm_per_prompt={"image": 1, "video": 1}, max_model_len=512)
    config = mmjax.EngineConfig(page_size=8, max_num_seqs=2, max_num_batched_tokens=64, max_model_len=512)
    llm.engine(config).warmup(prompt_logprobs=False)
    workload = [
        {"prompt": chat(f"{VIDEO}?"), "multi_modal_data": {"video": clip(7, 40, 90, seed=5)}},
        {"prompt": chat(f"{VIDEO}?"), "multi_modal_data": {"video": (clip(30, 112, 112, seed=6), {"fps": 6.0})}},
        {"prompt": chat(f"{IMAGE} and {VIDEO}?"),
         "multi_modal_data": {"image": picture(120, 45, seed=7), "video": clip(3, 30, 60, seed=8)}},
        {"prompt": chat("What?", images=1), "multi_modal_data": {"image": picture(33, 200, seed=9)}},
    ]
    buckets = {llm.process(p).mm_kwargs["pixel_values_videos"].shape[0] for p in workload[:3]}
    assert len(buckets) >= 2  # the videos span several patch buckets
    with count_compilations() as compiled:
        outputs = mmjax.generate(llm, workload, mmjax.SamplingParams(temperature=0.0, max_tokens=3),
                                 engine_config=config, use_tqdm=False)
    assert all(o.finished and o.error is None for o in outputs)
    assert compiled[0] == 0, f"{compiled[0]} programs compiled after warm-up"
