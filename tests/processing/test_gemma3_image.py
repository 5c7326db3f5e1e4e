"""``process_image`` equals transformers' Gemma 3 image processor, float for float, crops included.

The reference is what ``AutoProcessor`` loads from a tiny checkpoint in the Hub layout
(``Gemma3ImageProcessorPil`` without torchvision) and, with ``backend="torchvision"``,
``Gemma3ImageProcessor`` through the tests' torchvision stub (torch's own antialiased kernel). Pan and
scan's crop geometry is checked against transformers' ``pan_and_scan`` on sizes around its thresholds.
"""

from __future__ import annotations

import json
import os

import numpy as np
import PIL.Image
import pytest
from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil

from mmjax.processing.gemma3_config import Gemma3ImageConfig, PanAndScan
from mmjax.processing.gemma3_crops import crop_boxes, num_crops
from mmjax.processing.gemma3_image import process_image
from tests.models.tiny_gemma3 import checkpoint, hf_processor, picture
from tests.processing.qwen_reference import torch_classes, torchvision_stub

#: Pan-and-scan kwargs for images of tens of pixels (the defaults want crops of 256 px at least).
SMALL_CROPS = {"do_pan_and_scan": True, "pan_and_scan_min_crop_size": 16, "pan_and_scan_max_num_crops": 3,
               "pan_and_scan_min_ratio_to_activate": 1.2}
#: wide, tall, square, odd sizes, far beyond the crop limit, under one crop's minimum, tiny
SIZES = [(40, 70), (70, 40), (33, 33), (32, 32), (50, 200), (200, 50), (17, 1000), (1000, 17), (20, 31), (15, 60),
         (7, 5), (1, 1), (333, 500)]


def hub_preprocessor() -> dict:
    with open(os.path.join(checkpoint(), "preprocessor_config.json"), encoding="utf-8") as f:
        return json.load(f)


def auto_processor(images, **kwargs):
    """transformers' ``Gemma3Processor`` (from ``AutoProcessor``) on one marker and ``images``."""
    return hf_processor()(text="<start_of_image>", images=images, **kwargs)


def assert_equal_to(reference, image, config: Gemma3ImageConfig, **kwargs) -> None:
    expected = reference(images=[image], return_tensors="np", **kwargs)
    mine = process_image(image, config)
    assert mine.pixel_values.dtype == np.float32 and mine.pixel_values.shape == expected["pixel_values"].shape
    np.testing.assert_array_equal(mine.pixel_values, expected["pixel_values"])
    assert mine.num_crops == len(expected["pixel_values"]) - 1


@pytest.mark.parametrize("pan_and_scan", [False, True], ids=["whole", "pan-and-scan"])
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_pixel_values_equal_auto_processors(size, pan_and_scan):
    kwargs = SMALL_CROPS if pan_and_scan else {}
    config = Gemma3ImageConfig.from_hf_dict({**hub_preprocessor(), **kwargs})
    assert_equal_to(auto_processor, picture(*size, seed=size[0] + size[1]), config, **kwargs)


def test_the_processor_puts_the_original_first_then_crops_row_by_row():
    image = picture(30, 100, seed=3)
    mine = process_image(image, Gemma3ImageConfig.from_hf_dict({**hub_preprocessor(), **SMALL_CROPS}))
    assert mine.num_crops == 3
    whole = process_image(image, Gemma3ImageConfig.from_hf_dict(hub_preprocessor())).pixel_values
    np.testing.assert_array_equal(mine.pixel_values[:1], whole)
    rgb = np.asarray(image)
    for k, left in enumerate((0, 34, 68)):  # ceil(100 / 3) = 34 columns a crop, the last one 32
        crop = PIL.Image.fromarray(rgb[:, left:left + 34])
        alone = process_image(crop, Gemma3ImageConfig.from_hf_dict(hub_preprocessor())).pixel_values
        np.testing.assert_array_equal(mine.pixel_values[1 + k], alone[0])


def test_other_modes_and_arrays_convert_as_transformers_does():
    config = Gemma3ImageConfig.from_hf_dict(hub_preprocessor())
    rgba = picture(20, 30).convert("RGBA")
    rgba.putalpha(PIL.Image.fromarray(np.random.default_rng(1).integers(0, 256, (20, 30), dtype=np.uint8)))
    for image in (rgba, picture(20, 30).convert("L"), picture(20, 30).convert("P")):
        assert_equal_to(auto_processor, image, config)
    array = np.asarray(picture(25, 45))
    np.testing.assert_array_equal(process_image(array, config).pixel_values,
                                  process_image(PIL.Image.fromarray(array), config).pixel_values)


@pytest.mark.parametrize("size", [(40, 70), (70, 40), (50, 200), (33, 33)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_torchvision_backend_equals_gemma3_image_processor(size):
    with torchvision_stub():
        torch_classes()  # binds the stub into transformers' backends module
        from transformers.models.gemma3.image_processing_gemma3 import Gemma3ImageProcessor
    settings = {k: v for k, v in hub_preprocessor().items() if v is not None and k in ("size", "resample")}
    reference = Gemma3ImageProcessor(**settings)
    config = Gemma3ImageConfig.from_hf_dict({**hub_preprocessor(), **SMALL_CROPS}, backend="torchvision")
    assert_equal_to(reference, picture(*size, seed=5), config, **SMALL_CROPS)


def transformers_crops(height: int, width: int, settings: PanAndScan) -> list[tuple[int, int]]:
    """The ``(height, width)`` of each crop transformers' ``pan_and_scan`` cuts."""
    crops = Gemma3ImageProcessorPil().pan_and_scan(np.zeros((3, height, width), np.uint8), settings.min_crop_size,
                                                   settings.max_num_crops, settings.min_ratio_to_activate)
    return [crop.shape[1:] for crop in crops]


RATIO = PanAndScan(enabled=True, min_crop_size=10, max_num_crops=4, min_ratio_to_activate=1.5)
GEOMETRY = [
    ((100, 149), RATIO),  # just under the activation ratio (1.49)
    ((100, 150), RATIO),  # exactly at it: cut
    ((149, 100), RATIO), ((150, 100), RATIO),  # the same, tall
    ((100, 249), RATIO), ((100, 250), RATIO),  # 2.49 rounds to 2 crops, 2.5 half up to 3
    ((10, 1000), RATIO),  # ratio 100: capped at max_num_crops
    ((10, 1000), PanAndScan(True, 10, 1, 1.5)),  # a limit of one crop: the whole image again
    ((10, 35), PanAndScan(True, 10, 4, 1.5)),  # 3 crops of 12 columns, the last 11
    ((20, 45), PanAndScan(True, 21, 4, 1.2)),  # rows under the minimum crop: no crops
    ((30, 45), PanAndScan(True, 25, 4, 1.2)),  # 45 // 25 = 1 crop, raised to 2 of 23 < 25 columns: none
    ((30, 100), PanAndScan(True, 30, 4, 1.2)),  # 100 // 30 = 3 crops, not round(3.33) = 3, of 34 columns
    ((64, 64), PanAndScan(True, 16, 4, 1.0)),  # a ratio of 1 cuts a square in two
    ((64, 64), PanAndScan(False, 16, 4, 1.0)),  # off
]


@pytest.mark.parametrize(("size", "settings"), GEOMETRY, ids=lambda v: str(v))
def test_crop_geometry_equals_transformers(size, settings):
    expected = transformers_crops(*size, settings) if settings.enabled else []
    boxes = crop_boxes(*size, settings)
    assert [(b.height, b.width) for b in boxes] == [tuple(s) for s in expected]
    assert num_crops(*size, settings) == len(expected)
    covered = np.zeros(size, np.int32)
    for b in boxes:
        covered[b.top:b.top + b.height, b.left:b.left + b.width] += 1
    assert not boxes or (covered == 1).all()  # the crops tile the image


def test_checkpoint_settings_and_defaults():
    config = Gemma3ImageConfig.from_hf_dict(hub_preprocessor())
    assert config.size == (32, 32) and config.image_mean == config.image_std == (0.5, 0.5, 0.5)
    assert config.pan_and_scan == PanAndScan(False, 256, 4, 1.2)  # null in the file: Gemma3Processor's defaults
    on = Gemma3ImageConfig.from_hf_dict({**hub_preprocessor(), **SMALL_CROPS})
    assert on.pan_and_scan == PanAndScan(True, 16, 3, 1.2)


@pytest.mark.parametrize(("key", "value", "message"), [
    ("do_pan_and_scan", "yes", "do_pan_and_scan must be True or False"),
    ("pan_and_scan_min_crop_size", 0, "pan_and_scan_min_crop_size must be an int >= 1, got 0"),
    ("pan_and_scan_min_crop_size", 2.5, "pan_and_scan_min_crop_size must be an int >= 1"),
    ("pan_and_scan_max_num_crops", -1, "pan_and_scan_max_num_crops must be an int >= 1, got -1"),
    ("pan_and_scan_max_num_crops", True, "pan_and_scan_max_num_crops must be an int >= 1, got True"),
    ("pan_and_scan_min_ratio_to_activate", 0.0, "pan_and_scan_min_ratio_to_activate must be a finite number > 0"),
    ("pan_and_scan_min_ratio_to_activate", float("inf"), "pan_and_scan_min_ratio_to_activate must be a finite .* inf"),
])
def test_bad_values_name_the_field_and_the_range(key, value, message):
    with pytest.raises(ValueError, match=f"mm_processor_kwargs {message}"):
        PanAndScan().override({key: value})
    with pytest.raises(ValueError, match=f"preprocessor_config.json {message}"):
        Gemma3ImageConfig.from_hf_dict({**hub_preprocessor(), key: value})


def test_unsupported_flags_and_sizes_are_refused():
    with pytest.raises(ValueError, match="do_normalize=False is not supported"):
        Gemma3ImageConfig.from_hf_dict({**hub_preprocessor(), "do_normalize": False})
    with pytest.raises(ValueError, match="`size` must have 'height' and 'width'"):
        Gemma3ImageConfig.from_hf_dict({**hub_preprocessor(), "size": {"shortest_edge": 32}})
    with pytest.raises(ValueError, match="the last one empty"):
        crop_boxes(1, 5, PanAndScan(True, 1, 4, 1.2))
