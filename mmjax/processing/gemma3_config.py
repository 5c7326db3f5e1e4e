"""Gemma 3's image-processor settings, read from a checkpoint's ``preprocessor_config.json`` as transformers reads it.

``Gemma3ImageConfig`` holds what transformers' ``Gemma3ImageProcessor`` / ``Gemma3ImageProcessorPil`` do with
an image (resize every image and crop to ``size``, bilinear; rescale; normalize) and the pan-and-scan
settings (``PanAndScan``). A key the file leaves out or sets to null takes the default: the image
processor class's for the resize and normalization, ``Gemma3Processor.images_kwargs``' for pan and scan
(off; crops of at least 256 px, at most 4 of them, for images at least 1.2 times as long as wide).

One difference from transformers 5.25, on purpose: its ``Gemma3Processor`` passes its own pan-and-scan
defaults on every call, so the values a ``preprocessor_config.json`` sets are ignored unless the caller
passes them again (the bare image processor, ``AutoImageProcessor``, does read them). The Hub's Gemma 3
checkpoints set all four to null, where both agree; mmjax reads a set value as the file says.

``PanAndScan.override`` applies ``mm_processor_kwargs``, checking each value (a ValueError names the field
and what it may be).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any, Literal

from mmjax.processing.resample import BILINEAR

IMAGENET_STANDARD = (0.5, 0.5, 0.5)
#: How pixels are resized: ``"pil"`` (``Gemma3ImageProcessorPil``, transformers' default without torchvision)
#: or ``"torchvision"`` (``Gemma3ImageProcessor``: torch's antialiased kernel, fused normalization).
ResizeBackend = Literal["pil", "torchvision"]

#: The ``mm_processor_kwargs`` (and ``preprocessor_config.json`` keys) of pan and scan.
PAN_AND_SCAN_KEYS = ("do_pan_and_scan", "pan_and_scan_min_crop_size", "pan_and_scan_max_num_crops",
                     "pan_and_scan_min_ratio_to_activate")
# Settings mmjax does not implement other values of (every Gemma 3 checkpoint keeps transformers' default).
_FIXED_FLAGS = ("do_resize", "do_rescale", "do_normalize", "do_convert_rgb")


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    return value


@dataclasses.dataclass(frozen=True)
class PanAndScan:
    """Pan-and-scan settings; the defaults are ``Gemma3Processor``'s.

    enabled: crop an image long enough (``do_pan_and_scan``).
    min_crop_size: no crop side shorter than this many pixels of the source image (``pan_and_scan_min_crop_size``).
    max_num_crops: at most this many crops (``pan_and_scan_max_num_crops``).
    min_ratio_to_activate: crop only an image whose long side is at least this many times its short side
      (``pan_and_scan_min_ratio_to_activate``; a ratio at most 1 crops every image).
    """

    enabled: bool = False
    min_crop_size: int = 256
    max_num_crops: int = 4
    min_ratio_to_activate: float = 1.2

    def __post_init__(self) -> None:
        self.check()

    def check(self, prefix: str = "") -> None:
        """Raise a ValueError naming the first field (as ``prefix`` + its ``mm_processor_kwargs`` key) out of range."""
        if not isinstance(self.enabled, bool):
            raise ValueError(f"{prefix}do_pan_and_scan must be True or False, got {self.enabled!r}")
        _positive_int(f"{prefix}pan_and_scan_min_crop_size", self.min_crop_size)
        _positive_int(f"{prefix}pan_and_scan_max_num_crops", self.max_num_crops)
        ratio = self.min_ratio_to_activate
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not (math.isfinite(ratio) and ratio > 0):
            raise ValueError(f"{prefix}pan_and_scan_min_ratio_to_activate must be a finite number > 0, got {ratio!r}")

    def override(self, values: Mapping[str, Any], prefix: str = "mm_processor_kwargs ") -> PanAndScan:
        """These settings with ``values`` (``PAN_AND_SCAN_KEYS``; a None value keeps the setting) applied.

        Raises:
          ValueError: a value out of range, naming ``prefix`` + the key and the range.
        """
        names = dict(zip(PAN_AND_SCAN_KEYS, ("enabled", "min_crop_size", "max_num_crops", "min_ratio_to_activate")))
        changes = {names[key]: value for key, value in values.items() if key in names and value is not None}
        if not changes:
            return self
        candidate = object.__new__(PanAndScan)  # checked below with the request's field names
        for field in dataclasses.fields(self):
            object.__setattr__(candidate, field.name, changes.get(field.name, getattr(self, field.name)))
        candidate.check(prefix)
        return candidate

    @property
    def most_crops(self) -> int:
        """The most crops an image can be cut into (0 when pan and scan is off)."""
        return self.max_num_crops if self.enabled else 0


@dataclasses.dataclass(frozen=True)
class Gemma3ImageConfig:
    """transformers' Gemma 3 image processor settings. Defaults: the class's (224-px images)."""

    size: tuple[int, int] = (224, 224)  # (height, width) every image and crop is resized to
    image_mean: tuple[float, ...] = IMAGENET_STANDARD
    image_std: tuple[float, ...] = IMAGENET_STANDARD
    rescale_factor: float = 1 / 255
    resample: int = BILINEAR
    pan_and_scan: PanAndScan = PanAndScan()
    backend: ResizeBackend = "pil"

    def __post_init__(self) -> None:
        if len(self.size) != 2 or min(self.size) < 1:
            raise ValueError(f"size must be (height, width) of positive ints, got {self.size}")
        if not len(self.image_mean) == len(self.image_std) == 3:
            raise ValueError(f"image_mean and image_std need 3 values (RGB), got {self.image_mean}, {self.image_std}")
        if self.backend not in ("pil", "torchvision"):
            raise ValueError(f"backend must be 'pil' or 'torchvision', got {self.backend!r}")

    @classmethod
    def from_hf_dict(cls, config: Mapping[str, Any], *, backend: ResizeBackend = "pil") -> Gemma3ImageConfig:
        """Settings from a ``preprocessor_config.json`` dict (unknown keys ignored; null takes the default).

        Raises:
          ValueError: a flag mmjax does not implement turned off, a ``size`` without height and width, or a
            pan-and-scan value out of range (named ``preprocessor_config.json <key>``).
        """
        for flag in _FIXED_FLAGS:
            if config.get(flag) is not None and config[flag] is not True:
                raise ValueError(f"{flag}={config[flag]!r} is not supported: mmjax maps Gemma 3 images with "
                                 f"{flag}=True")
        base = cls()

        def get(key: str, default: Any) -> Any:
            return default if config.get(key) is None else config[key]

        size = get("size", {"height": base.size[0], "width": base.size[1]})
        if not isinstance(size, Mapping) or not size.get("height") or not size.get("width"):
            raise ValueError(f"`size` must have 'height' and 'width', got {size!r}")
        pan_and_scan = PanAndScan().override({k: config.get(k) for k in PAN_AND_SCAN_KEYS},
                                             prefix="preprocessor_config.json ")
        return cls(
            size=(int(size["height"]), int(size["width"])),
            image_mean=tuple(float(x) for x in get("image_mean", base.image_mean)),
            image_std=tuple(float(x) for x in get("image_std", base.image_std)),
            rescale_factor=float(get("rescale_factor", base.rescale_factor)),
            resample=int(get("resample", base.resample)),
            pan_and_scan=pan_and_scan,
            backend=backend,
        )
