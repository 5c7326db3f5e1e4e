"""``process_video`` equals transformers' Qwen2-VL and Qwen3-VL video processors and processors.

The reference is transformers' ``Qwen2VLVideoProcessor`` (Qwen2-VL, Qwen2.5-VL)
and ``Qwen3VLVideoProcessor``, run on their torch code path through the test's
torchvision stub (``qwen_reference``), and the full ``Qwen2_5_VLProcessor`` /
``Qwen3VLProcessor`` for ``second_per_grid_ts`` and the prompt text. Videos:
1 to 17 frames (odd counts pad the last temporal patch), with and without a
source frame rate, odd and extreme frame sizes, under the checkpoints' configs
and the sampling and pixel-cap options.
"""

from __future__ import annotations

import dataclasses
import warnings
from unittest import mock

import numpy as np
import PIL.Image
import pytest
import torch
from transformers.models.qwen2_5_vl.processing_qwen2_5_vl import Qwen2_5_VLProcessor
from transformers.models.qwen3_vl.processing_qwen3_vl import Qwen3VLProcessor
from transformers.processing_utils import ProcessorMixin
from transformers.video_utils import VideoMetadata

from mmjax.processing.qwen_vl_config import QwenVideoConfig
from mmjax.processing.qwen_vl_frames import frame_timestamps, qwen3_vl_video_prompt, sample_frame_indices
from mmjax.processing.qwen_vl_video import num_video_tokens, process_video
from tests.processing.qwen_reference import (
    make_qwen_tokenizer,
    pil_image_processor,
    run_video_processor,
    video_processor,
)

#: Qwen2.5-VL checkpoints ship no video config: transformers reads preprocessor_config.json for the video too
QWEN2_5_VL = {"min_pixels": 3136, "max_pixels": 12845056, "patch_size": 14, "temporal_patch_size": 2, "merge_size": 2}
QWEN3_VL = {
    "size": {"longest_edge": 25165824, "shortest_edge": 4096},
    "patch_size": 16,
    "temporal_patch_size": 2,
    "merge_size": 2,
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
}
#: name -> (family, config dict given to both transformers and mmjax)
CONFIGS = {
    "qwen2.5-vl": ("qwen2_vl", QWEN2_5_VL),
    "qwen2-vl-class-defaults": ("qwen2_vl", {}),
    "qwen2-vl-fps": ("qwen2_vl", {"do_sample_frames": True, "fps": 2}),
    "qwen2-vl-num-frames": ("qwen2_vl", {"do_sample_frames": True, "num_frames": 6}),
    "qwen2-vl-cap": ("qwen2_vl", {"cap_pixels_per_frame": True, "max_video_tokens": 200}),
    "qwen3-vl": ("qwen3_vl", QWEN3_VL),
    "qwen3-vl-class-defaults": ("qwen3_vl", {}),
    "qwen3-vl-cap": ("qwen3_vl", {**QWEN3_VL, "cap_pixels_per_frame": True, "max_video_tokens": 30}),
    "qwen3-vl-every-frame": ("qwen3_vl", {"do_sample_frames": False}),
    "qwen3-vl-num-frames": ("qwen3_vl", {"fps": None, "num_frames": 5}),
}
#: (frames, height, width, source fps or None)
VIDEOS = [
    (1, 50, 60, 30.0),
    (2, 50, 60, None),
    (3, 37, 53, None),
    (5, 100, 130, 24.0),
    (7, 90, 160, 29.97),
    (17, 48, 64, 10.0),
    (13, 40, 72, 60.0),
    (15, 60, 45, 2.5),
    (4, 6, 1000, None),
]
#: frames big enough for the per-frame cap to bind (158k pixels against a capped ~105k and ~31k)
CAP_VIDEOS = [(6, 330, 480, 25.0), (3, 400, 300, None)]


def random_video(frames: int, height: int, width: int) -> np.ndarray:
    rng = np.random.default_rng(frames * 1009 + height * 31 + width)
    return rng.integers(0, 256, (frames, height, width, 3), dtype=np.uint8)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_video_equals_transformers(name):
    """Patches to the bit, grid, kept frames, ``second_per_grid_ts`` and timestamps; errors where transformers errs."""
    family, config_dict = CONFIGS[name]
    processor = video_processor(family, **config_dict)
    config = QwenVideoConfig.from_hf_dict(config_dict, family=family)
    for frames, height, width, fps in VIDEOS + (CAP_VIDEOS if config.cap_pixels_per_frame else []):
        video = random_video(frames, height, width)
        try:
            expected = run_video_processor(processor, video, fps)
        except (ValueError, ZeroDivisionError):  # transformers refuses: so must mmjax, with a ValueError
            with pytest.raises(ValueError):
                process_video(video, config, fps)
            continue
        mine = process_video(video, config, fps)
        case = (name, frames, height, width, fps)
        pixel_values = expected["pixel_values_videos"].numpy()
        assert pixel_values.shape == mine.pixel_values.shape, case
        np.testing.assert_array_equal(mine.pixel_values, pixel_values, err_msg=str(case))
        grid = tuple(expected["video_grid_thw"][0].tolist())
        assert tuple(mine.grid_thw) == grid, case
        assert mine.num_tokens == np.prod(grid) // 4 and mine.tokens_per_frame == grid[1] * grid[2] // 4
        assert num_video_tokens(len(mine.frame_indices), height, width, config) == mine.num_tokens
        metadata = expected["video_metadata"][0]
        assert list(mine.frame_indices) == [int(i) for i in metadata.frames_indices], case
        assert mine.frames.shape == (
            len(mine.frame_indices),
            grid[1] * config.patch_size,
            grid[2] * config.patch_size,
            3,
        )
        # Qwen2_5_VLProcessor: temporal_patch_size / metadata.sampled_fps
        assert mine.second_per_grid_ts == processor.temporal_patch_size / metadata.sampled_fps, case
        fps_used = 24 if metadata.fps is None else metadata.fps  # Qwen3VLProcessor.replace_video_token
        timestamps = Qwen3VLProcessor._calculate_timestamps(None, metadata.frames_indices, fps_used, 2)
        assert mine.timestamps == timestamps and len(timestamps) == grid[0], case
    if config.cap_pixels_per_frame:  # the cap binds on the big frames: fewer tokens than without it
        uncapped = dataclasses.replace(config, cap_pixels_per_frame=False)
        for frames, height, width, fps in CAP_VIDEOS:
            kept = len(sample_frame_indices(frames, fps, config))
            assert num_video_tokens(kept, height, width, config) < num_video_tokens(kept, height, width, uncapped)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_video_config_reads_like_transformers(name):
    """Every setting mmjax reads from a config dict is the one transformers' video processor ends up with."""
    family, config_dict = CONFIGS[name]
    theirs = video_processor(family, **config_dict)
    mine = QwenVideoConfig.from_hf_dict(config_dict, family=family)
    assert (mine.min_pixels, mine.max_pixels) == (theirs.size.shortest_edge, theirs.size.longest_edge)
    fields = ("patch_size", "temporal_patch_size", "merge_size", "do_sample_frames", "fps", "num_frames")
    fields += ("min_frames", "max_frames", "max_video_tokens", "cap_pixels_per_frame", "rescale_factor")
    for field in fields:
        assert getattr(mine, field) == getattr(theirs, field), field
    assert mine.image_mean == tuple(theirs.image_mean) and mine.image_std == tuple(theirs.image_std)
    assert mine.resample == int(theirs.resample)


def test_pil_frames_equal_array_frames():
    video = random_video(5, 41, 67)
    config = QwenVideoConfig.defaults("qwen3_vl")
    from_array = process_video(video, config, 12.0)
    from_pil = process_video([PIL.Image.fromarray(frame) for frame in video], config, 12.0)
    np.testing.assert_array_equal(from_array.pixel_values, from_pil.pixel_values)
    assert from_array.grid_thw == from_pil.grid_thw and from_array.timestamps == from_pil.timestamps


def build_processor(cls, family: str, config_dict: dict):
    """A real transformers processor; its sub-processor class check is patched (transformers' video processor
    base class is a dummy without torchvision, so the check cannot resolve it)."""
    with mock.patch.object(ProcessorMixin, "check_argument_for_proper_class", lambda self, name, arg: type(arg)):
        return cls(
            image_processor=pil_image_processor(patch_size=config_dict["patch_size"]),
            tokenizer=make_qwen_tokenizer(),
            video_processor=video_processor(family, **config_dict),
        )


@pytest.mark.parametrize("frames, fps", [(37, 7.5), (9, None), (4, 29.97), (2, 1.0)])
def test_qwen3_vl_prompt_equals_transformers(frames, fps):
    """The whole prompt Qwen3VLProcessor builds around one video, decoded, equals mmjax's expansion."""
    processor = build_processor(Qwen3VLProcessor, "qwen3_vl", QWEN3_VL)
    video = random_video(frames, 64, 96)
    text = "<|endoftext|>describe <|vision_start|><|video_pad|><|vision_end|> now"
    metadata = None if fps is None else {"total_num_frames": frames, "fps": fps, "frames_indices": list(range(frames))}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = processor(text=[text], videos=[video], videos_kwargs={"video_metadata": metadata})
    mine = process_video(video, QwenVideoConfig.from_hf_dict(QWEN3_VL, family="qwen3_vl"), fps)
    expansion = qwen3_vl_video_prompt(mine.timestamps, mine.tokens_per_frame)
    expected = text.replace("<|vision_start|><|video_pad|><|vision_end|>", expansion)
    assert processor.tokenizer.decode(out["input_ids"][0]) == expected
    assert out["input_ids"][0] == processor.tokenizer(expected)["input_ids"]
    np.testing.assert_array_equal(out["pixel_values_videos"].numpy(), mine.pixel_values)


@pytest.mark.parametrize("frames, fps", [(13, 30.0), (8, None)])
def test_qwen2_5_vl_processor_outputs_equal(frames, fps):
    """Qwen2_5_VLProcessor's second_per_grid_ts, grid and placeholder run."""
    processor = build_processor(Qwen2_5_VLProcessor, "qwen2_vl", QWEN2_5_VL)
    video = random_video(frames, 56, 84)
    metadata = None if fps is None else {"total_num_frames": frames, "fps": fps, "frames_indices": list(range(frames))}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = processor(text=["<|vision_start|><|video_pad|><|vision_end|>"], videos=[video],
                        videos_kwargs={"video_metadata": metadata})  # fmt: skip
    mine = process_video(video, QwenVideoConfig.from_hf_dict(QWEN2_5_VL, family="qwen2_vl"), fps)
    assert out["second_per_grid_ts"] == [mine.second_per_grid_ts]
    assert tuple(out["video_grid_thw"][0].tolist()) == tuple(mine.grid_thw)
    video_token = processor.tokenizer.convert_tokens_to_ids("<|video_pad|>")
    assert out["input_ids"][0].count(video_token) == mine.num_tokens


SAMPLING = {
    "qwen2-vl-fps": ("qwen2_vl", {"do_sample_frames": True, "fps": 2}),
    "qwen2-vl-fps-many": ("qwen2_vl", {"do_sample_frames": True, "fps": 5, "max_frames": 10000}),
    "qwen2-vl-num-frames": ("qwen2_vl", {"do_sample_frames": True, "num_frames": 7}),
    "qwen3-vl": ("qwen3_vl", {}),
    "qwen3-vl-fps": ("qwen3_vl", {"fps": 7.3, "min_frames": 6}),
}


@pytest.mark.parametrize("name", list(SAMPLING))
def test_frame_sampling_equals_transformers(name):
    """Kept frame indices for videos of 1 to 200k frames: transformers' ``sample_frames`` on metadata only.

    Qwen2-VL's float32 ``torch.arange`` rounds per CPU vector width; past 8192 frames the last bit can pick
    the frame, so long videos are compared where torch runs its AVX2 kernels (as mmjax's emulation does).
    """
    family, config_dict = SAMPLING[name]
    processor = video_processor(family, **config_dict)
    config = QwenVideoConfig.from_hf_dict(config_dict, family=family)
    rng = np.random.default_rng(7)
    totals = list(range(1, 40)) + [int(t) for t in rng.integers(40, 8192, 60)]
    if torch.backends.cpu.get_cpu_capability() == "AVX2":
        totals += [int(t) for t in rng.integers(8192, 200_000, 60)]
    for total in totals:
        for source_fps in (1.0, 23.976, 30.0, 60.0):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    expected = np.asarray(processor.sample_frames(VideoMetadata(total, fps=source_fps))).tolist()
                except (ValueError, ZeroDivisionError):
                    with pytest.raises(ValueError):
                        sample_frame_indices(total, source_fps, config)
                    continue
            assert sample_frame_indices(total, source_fps, config).tolist() == expected, (total, source_fps)


def test_timestamps_average_each_temporal_patch():
    assert frame_timestamps(np.array([0, 12, 24]), 24.0, 2) == [0.25, 1.0]  # (0 + 0.5) / 2, last frame repeated
    assert frame_timestamps(np.array([0, 1]), None, 2) == [1 / 48]  # no frame rate: transformers' 24
    prompt = qwen3_vl_video_prompt([0.25, 1.0], 2)
    assert prompt == (
        "<0.2 seconds><|vision_start|><|video_pad|><|video_pad|><|vision_end|>"
        "<1.0 seconds><|vision_start|><|video_pad|><|video_pad|><|vision_end|>"
    )


@pytest.mark.parametrize(
    "video, fps, message",
    [
        (np.zeros((4, 20, 20, 3), np.float32), None, "uint8 frames"),
        (np.zeros((20, 20, 3), np.uint8), None, r"\[num_frames, height, width, 3\]"),
        (np.zeros((4, 20, 20, 1), np.uint8), None, r"\[num_frames, height, width, 3\]"),
        (np.zeros((0, 20, 20, 3), np.uint8), None, "at least one frame"),
        ([], None, "at least one frame"),
        ([PIL.Image.new("L", (20, 20))] * 4, None, "RGB PIL images"),
        ([PIL.Image.new("RGB", (20, 20)), PIL.Image.new("RGB", (21, 20))], None, "of one size"),
        ("video.mp4", None, "PIL images"),
        (np.zeros((4, 20, 20, 3), np.uint8), 0.0, "positive"),
        (np.zeros((4, 20, 20, 3), np.uint8), float("nan"), "finite"),
        (np.zeros((4, 2, 500, 3), np.uint8), None, "aspect ratio"),
        (np.zeros((1, 20, 20, 3), np.uint8), None, "at least temporal_patch_size=2 frames"),
    ],
)
def test_bad_videos_raise_clear_errors(video, fps, message):
    with pytest.raises(ValueError, match=message):
        process_video(video, QwenVideoConfig.defaults("qwen3_vl"), fps)


def test_bad_sampling_settings_raise_clear_errors():
    video = np.zeros((8, 28, 28, 3), np.uint8)
    by_fps = QwenVideoConfig.from_hf_dict({"do_sample_frames": True, "fps": 2}, family="qwen2_vl")
    with pytest.raises(ValueError, match="needs the video's frame rate"):
        process_video(video, by_fps, None)
    both = QwenVideoConfig.from_hf_dict({"num_frames": 4}, family="qwen3_vl")  # fps=2 stays set
    with pytest.raises(ValueError, match="mutually exclusive"):
        process_video(video, both, None)
    with pytest.raises(ValueError, match="unknown video family"):
        QwenVideoConfig.defaults("qwen4_vl")
