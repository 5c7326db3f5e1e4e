"""``process_image`` equals transformers' Qwen2-VL image processor, float for float.

The reference is transformers' default image processor for Qwen2-VL, Qwen2.5-VL
and Qwen3-VL checkpoints where torchvision is missing, ``Qwen2VLImageProcessorPil``
(PIL bicubic), and, with ``backend="torchvision"``, ``Qwen2VLImageProcessor``
(torch's antialiased kernel through the test's torchvision stub). Each case
builds both from the same processor-config dict: the patches must be equal to
the bit, the grid and the token count equal.
"""

from __future__ import annotations

import json

import numpy as np
import PIL.Image
import pytest
from transformers import AutoImageProcessor
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from mmjax.processing.qwen_vl_config import QwenImageConfig
from mmjax.processing.qwen_vl_image import process_image
from mmjax.processing.resample import BILINEAR, resize_like_torch
from tests.processing.qwen_reference import pil_image_processor, torch_image_processor

#: processor-config dicts as the checkpoints ship them (Qwen2.5-VL: top-level min/max pixels; Qwen3-VL: ``size``)
QWEN2_5_VL = {
    "min_pixels": 3136,
    "max_pixels": 12845056,
    "patch_size": 14,
    "temporal_patch_size": 2,
    "merge_size": 2,
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "image_processor_type": "Qwen2VLImageProcessor",
    "processor_class": "Qwen2_5_VLProcessor",
}
QWEN3_VL = {
    "size": {"longest_edge": 16777216, "shortest_edge": 65536},
    "patch_size": 16,
    "temporal_patch_size": 2,
    "merge_size": 2,
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
    "image_processor_type": "Qwen2VLImageProcessorFast",
    "processor_class": "Qwen3VLProcessor",
}
CONFIGS = {
    "qwen2.5-vl": QWEN2_5_VL,
    "qwen3-vl": QWEN3_VL,
    "lowered-max": {**QWEN2_5_VL, "max_pixels": 64 * 28 * 28},  # a request's lower budget
    "raised-min": {**QWEN3_VL, "size": {"longest_edge": 16777216, "shortest_edge": 512 * 32 * 32}},
    "both-spellings": {**QWEN3_VL, "max_pixels": 100 * 32 * 32},  # top-level max_pixels wins over size
    "bilinear": {**QWEN2_5_VL, "resample": 2},
}

#: tiny, rounding edges (28 * k, 28 * k + 14 +- 1), extreme aspect ratios, large
SIZES = [(1, 1), (2, 3), (13, 29), (27, 28), (28, 28), (42, 70), (43, 69), (41, 8200), (8200, 41), (5, 900)]
SIZES += [(333, 500), (480, 640), (719, 1281)]
#: huge inputs, run under the lowered budget (their full-budget output would be 72M floats a side)
HUGE = [(4000, 3000), (1080, 7000)]


def random_image(height: int, width: int, seed: int = 0) -> PIL.Image.Image:
    rng = np.random.default_rng(seed + height * 7919 + width)
    return PIL.Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def assert_same(image, config_dict: dict, backend: str) -> None:
    reference = pil_image_processor if backend == "pil" else torch_image_processor
    expected = reference(**config_dict)(image)
    mine = process_image(image, QwenImageConfig.from_hf_dict(config_dict, backend=backend))
    pixel_values = np.asarray(expected["pixel_values"])
    assert pixel_values.dtype == mine.pixel_values.dtype == np.float32
    assert pixel_values.shape == mine.pixel_values.shape
    np.testing.assert_array_equal(mine.pixel_values, pixel_values)
    grid = tuple(int(x) for x in np.asarray(expected["image_grid_thw"])[0])
    assert tuple(mine.grid_thw) == grid
    assert mine.num_tokens == np.prod(grid) // config_dict["merge_size"] ** 2 == len(pixel_values) // 4


@pytest.mark.parametrize("config", list(CONFIGS))
def test_image_equals_transformers_pil_backend(config):
    sizes = SIZES if config in ("qwen2.5-vl", "qwen3-vl") else SIZES[::2]
    sizes = sizes + HUGE if config == "lowered-max" else sizes
    for height, width in sizes:
        assert_same(random_image(height, width), CONFIGS[config], "pil")


@pytest.mark.parametrize("config", ["qwen2.5-vl", "qwen3-vl", "bilinear"])
def test_image_equals_transformers_torchvision_backend(config):
    for height, width in SIZES[::2]:
        assert_same(random_image(height, width, seed=1), CONFIGS[config], "torchvision")


def test_image_modes_convert_like_transformers():
    """RGBA composites onto white, grayscale and palette images convert to RGB, a uint8 array passes as is."""
    rng = np.random.default_rng(5)
    rgba = PIL.Image.fromarray(rng.integers(0, 256, (61, 83, 4), dtype=np.uint8), mode="RGBA")
    gray = PIL.Image.fromarray(rng.integers(0, 256, (61, 83), dtype=np.uint8), mode="L")
    for image in (rgba, gray, rgba.convert("P"), rgba.convert("LA")):
        assert_same(image, QWEN2_5_VL, "pil")
    array = rng.integers(0, 256, (61, 83, 3), dtype=np.uint8)
    mine = process_image(array, QwenImageConfig.from_hf_dict(QWEN2_5_VL))
    expected = pil_image_processor(**QWEN2_5_VL)(PIL.Image.fromarray(array))
    np.testing.assert_array_equal(mine.pixel_values, np.asarray(expected["pixel_values"]))


def test_the_default_processor_here_is_the_pil_one(tmp_path):
    """Without torchvision, AutoImageProcessor gives the PIL class for both checkpoints' configs: what we match."""
    assert not __import__("transformers").utils.is_torchvision_available()
    for name, config in (("qwen2.5", QWEN2_5_VL), ("qwen3", QWEN3_VL)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "preprocessor_config.json").write_text(json.dumps(config))
        processor = AutoImageProcessor.from_pretrained(tmp_path / name)
        assert type(processor) is Qwen2VLImageProcessorPil
        assert int(processor.resample) == QwenImageConfig.from_hf_dict(config).resample == 3  # bicubic


def test_config_reads_both_pixel_spellings_like_transformers():
    for config in CONFIGS.values():
        mine = QwenImageConfig.from_hf_dict(config)
        theirs = pil_image_processor(**config)
        assert (mine.min_pixels, mine.max_pixels) == (theirs.size.shortest_edge, theirs.size.longest_edge)
        assert (mine.patch_size, mine.merge_size, mine.temporal_patch_size) == (
            theirs.patch_size, theirs.merge_size, theirs.temporal_patch_size,
        )  # fmt: skip
        assert mine.image_mean == tuple(theirs.image_mean) and mine.image_std == tuple(theirs.image_std)
    assert QwenImageConfig.from_hf_dict({}) == QwenImageConfig()  # the class defaults (Qwen2-VL's)


def test_resize_like_torch_equals_torch_interpolate():
    """The torch-exact resampler against torch's uint8 antialiased kernel, up and down, one axis or both."""
    import torch
    import torch.nn.functional as F

    rng = np.random.default_rng(6)
    cases = [(37, 53, 56, 84), (480, 640, 448, 616), (10, 900, 28, 840), (64, 64, 64, 32), (33, 1, 28, 2)]
    cases += [(720, 1280, 364, 644), (5, 5, 56, 56), (7, 700, 28, 2800)]
    for mode, resample in (("bicubic", 3), ("bilinear", BILINEAR)):
        for height, width, new_height, new_width in cases:
            frames = rng.integers(0, 256, (2, height, width, 3), dtype=np.uint8)
            tensor = torch.from_numpy(frames).permute(0, 3, 1, 2).contiguous()
            expected = F.interpolate(tensor, size=[new_height, new_width], mode=mode, antialias=True)
            mine = resize_like_torch(frames, (new_height, new_width), resample)
            np.testing.assert_array_equal(mine, expected.permute(0, 2, 3, 1).numpy())
    frames = rng.integers(0, 256, (1, 28, 56, 3), dtype=np.uint8)
    assert resize_like_torch(frames, (28, 56)) is frames
    with pytest.raises(ValueError, match="bilinear, bicubic"):
        resize_like_torch(frames, (56, 56), resample=1)


@pytest.mark.parametrize(
    "image, message",
    [
        (np.zeros((20, 20, 3), np.float32), "uint8"),
        (np.zeros((20, 20), np.uint8), r"\[height, width, 3\]"),
        (np.zeros((20, 20, 4), np.uint8), r"\[height, width, 3\]"),
        (np.zeros((0, 20, 3), np.uint8), "at least one pixel"),
        (np.zeros((2, 500, 3), np.uint8), "aspect ratio"),
        ([[0, 0, 0]], "PIL image"),
    ],
)
def test_bad_images_raise_clear_errors(image, message):
    with pytest.raises(ValueError, match=message):
        process_image(image, QwenImageConfig.from_hf_dict(QWEN2_5_VL))


def test_bad_configs_raise_clear_errors():
    with pytest.raises(ValueError, match="shortest_edge"):
        QwenImageConfig.from_hf_dict({"size": {"longest_edge": 1000}})
    with pytest.raises(ValueError, match="do_normalize=False is not supported"):
        QwenImageConfig.from_hf_dict({**QWEN2_5_VL, "do_normalize": False})
