"""The Qwen2-VL-family processor settings, read from a checkpoint's processor config the way transformers reads it.

Two values: ``QwenImageConfig`` (``preprocessor_config.json``, the image
processor; Qwen2-VL, Qwen2.5-VL and Qwen3-VL all use transformers'
``Qwen2VLImageProcessor``) and ``QwenVideoConfig``
(``video_preprocessor_config.json``, or ``preprocessor_config.json`` where a
checkpoint ships no video file, as Qwen2.5-VL's do), whose ``family`` says
which video processor's rules apply: ``"qwen2_vl"`` (``Qwen2VLVideoProcessor``,
used by Qwen2-VL and Qwen2.5-VL) or ``"qwen3_vl"`` (``Qwen3VLVideoProcessor``).

A key a config leaves out takes the transformers class's default. The pixel
budget comes in two spellings: ``size = {"shortest_edge": min_pixels,
"longest_edge": max_pixels}`` (what transformers 5 saves) and the older
top-level ``min_pixels`` / ``max_pixels`` keys, which win over ``size``, as in
transformers' ``__init__`` (``Qwen3VLVideoProcessor`` reads ``size`` only).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Literal, TypeVar

from mmjax.processing.resample import BICUBIC

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_STANDARD_MEAN = (0.5, 0.5, 0.5)
IMAGENET_STANDARD_STD = (0.5, 0.5, 0.5)

#: How pixels are resized: ``"pil"`` (``PIL.Image.resize``, transformers' image processor without torchvision)
#: or ``"torchvision"`` (torch's antialiased kernel: every video processor, and the image processor with torchvision).
ResizeBackend = Literal["pil", "torchvision"]
VideoFamily = Literal["qwen2_vl", "qwen3_vl"]

# Settings mmjax does not implement other values of (transformers' defaults, which every Qwen checkpoint keeps).
_FIXED_FLAGS = ("do_resize", "do_rescale", "do_normalize", "do_convert_rgb")


def _pixel_budget(config: Mapping[str, Any], default: tuple[int, int], *, read_pixel_keys: bool) -> tuple[int, int]:
    """``(min_pixels, max_pixels)`` from ``size`` and the top-level keys, as transformers' ``__init__`` merges them."""
    size = {"shortest_edge": default[0], "longest_edge": default[1]}
    if config.get("size") is not None:
        size = dict(config["size"])
    if read_pixel_keys:
        if config.get("min_pixels") is not None:
            size["shortest_edge"] = config["min_pixels"]
        if config.get("max_pixels") is not None:
            size["longest_edge"] = config["max_pixels"]
    if not size.get("shortest_edge") or not size.get("longest_edge"):
        raise ValueError(f"`size` must have 'shortest_edge' (min pixels) and 'longest_edge' (max pixels), got {size}")
    return int(size["shortest_edge"]), int(size["longest_edge"])


def _check_flags(config: Mapping[str, Any]) -> None:
    for flag in _FIXED_FLAGS:
        if config.get(flag, True) is not True:
            raise ValueError(f"{flag}={config[flag]!r} is not supported: mmjax maps Qwen-VL inputs with {flag}=True")


def _check_sizes(config: QwenImageConfig | QwenVideoConfig) -> None:
    for name in ("patch_size", "temporal_patch_size", "merge_size", "min_pixels", "max_pixels"):
        if getattr(config, name) < 1:
            raise ValueError(f"{name} must be a positive integer, got {getattr(config, name)}")
    if not len(config.image_mean) == len(config.image_std) == 3:
        raise ValueError(f"image_mean and image_std need 3 values (RGB), got {config.image_mean}, {config.image_std}")


def _common(config: Mapping[str, Any], defaults: Mapping[str, Any]) -> dict[str, Any]:
    def get(key: str) -> Any:
        value = config.get(key)
        return defaults[key] if value is None else value

    return dict(
        patch_size=int(get("patch_size")),
        temporal_patch_size=int(get("temporal_patch_size")),
        merge_size=int(get("merge_size")),
        image_mean=tuple(float(x) for x in get("image_mean")),
        image_std=tuple(float(x) for x in get("image_std")),
        resample=int(get("resample")),
        rescale_factor=float(get("rescale_factor")),
    )


@dataclasses.dataclass(frozen=True)
class QwenImageConfig:
    """transformers' ``Qwen2VLImageProcessor`` settings. Defaults: the class's (Qwen2-VL's)."""

    patch_size: int = 14
    temporal_patch_size: int = 2
    merge_size: int = 2
    min_pixels: int = 56 * 56
    max_pixels: int = 28 * 28 * 1280
    image_mean: tuple[float, ...] = OPENAI_CLIP_MEAN
    image_std: tuple[float, ...] = OPENAI_CLIP_STD
    resample: int = BICUBIC
    rescale_factor: float = 1 / 255
    backend: ResizeBackend = "pil"

    def __post_init__(self) -> None:
        _check_sizes(self)
        if self.backend not in ("pil", "torchvision"):
            raise ValueError(f"backend must be 'pil' or 'torchvision', got {self.backend!r}")

    @property
    def factor(self) -> int:
        """Side multiple of a resized image: ``patch_size * merge_size``."""
        return self.patch_size * self.merge_size

    @classmethod
    def from_hf_dict(cls, config: Mapping[str, Any], *, backend: ResizeBackend = "pil") -> QwenImageConfig:
        """Settings from a ``preprocessor_config.json`` dict (unknown keys ignored)."""
        _check_flags(config)
        defaults = dataclasses.asdict(cls())
        min_pixels, max_pixels = _pixel_budget(config, (cls.min_pixels, cls.max_pixels), read_pixel_keys=True)
        return cls(**_common(config, defaults), min_pixels=min_pixels, max_pixels=max_pixels, backend=backend)


_VIDEO_DEFAULTS: dict[str, dict[str, Any]] = {
    # Qwen2VLVideoProcessor's class attributes (Qwen2-VL, Qwen2.5-VL)
    "qwen2_vl": dict(
        patch_size=14,
        temporal_patch_size=2,
        merge_size=2,
        min_pixels=128 * 28 * 28,
        max_pixels=28 * 28 * 768,
        image_mean=OPENAI_CLIP_MEAN,
        image_std=OPENAI_CLIP_STD,
        resample=BICUBIC,
        rescale_factor=1 / 255,
        do_sample_frames=False,
        fps=None,
        num_frames=None,
        min_frames=4,
        max_frames=768,
        max_video_tokens=128000,
    ),
    # Qwen3VLVideoProcessor's class attributes
    "qwen3_vl": dict(
        patch_size=16,
        temporal_patch_size=2,
        merge_size=2,
        min_pixels=128 * 32 * 32,
        max_pixels=32 * 32 * 768,
        image_mean=IMAGENET_STANDARD_MEAN,
        image_std=IMAGENET_STANDARD_STD,
        resample=BICUBIC,
        rescale_factor=1 / 255,
        do_sample_frames=True,
        fps=2,
        num_frames=None,
        min_frames=4,
        max_frames=768,
        max_video_tokens=768,
    ),
}


@dataclasses.dataclass(frozen=True)
class QwenVideoConfig:
    """A Qwen video processor's settings; ``QwenVideoConfig.defaults(family)`` gives transformers' class defaults.

    ``do_sample_frames``: sample frames (at ``fps`` per second of the source, or
    ``num_frames`` in all) or keep every frame. ``cap_pixels_per_frame``: also
    bound each frame by a share of ``max_video_tokens`` (transformers' opt-in,
    off by default in 5.25). Frames are always resized with torch's kernel.
    """

    family: VideoFamily
    patch_size: int
    temporal_patch_size: int
    merge_size: int
    min_pixels: int
    max_pixels: int
    image_mean: tuple[float, ...]
    image_std: tuple[float, ...]
    resample: int
    rescale_factor: float
    do_sample_frames: bool
    fps: float | None
    num_frames: int | None
    min_frames: int
    max_frames: int
    max_video_tokens: int
    cap_pixels_per_frame: bool = False

    def __post_init__(self) -> None:
        if self.family not in _VIDEO_DEFAULTS:
            raise ValueError(f"unknown video family {self.family!r}: expected one of {sorted(_VIDEO_DEFAULTS)}")
        _check_sizes(self)

    @property
    def factor(self) -> int:
        """Side multiple of a resized frame: ``patch_size * merge_size``."""
        return self.patch_size * self.merge_size

    @classmethod
    def defaults(cls, family: VideoFamily) -> QwenVideoConfig:
        """transformers' class defaults of ``family``'s video processor."""
        if family not in _VIDEO_DEFAULTS:
            raise ValueError(f"unknown video family {family!r}: expected one of {sorted(_VIDEO_DEFAULTS)}")
        return cls(family=family, **_VIDEO_DEFAULTS[family])

    @classmethod
    def from_hf_dict(cls, config: Mapping[str, Any], *, family: VideoFamily) -> QwenVideoConfig:
        """Settings from a ``video_preprocessor_config.json`` (or ``preprocessor_config.json``) dict."""
        base = cls.defaults(family)
        _check_flags(config)
        defaults = dataclasses.asdict(base)
        min_pixels, max_pixels = _pixel_budget(
            config, (base.min_pixels, base.max_pixels), read_pixel_keys=family == "qwen2_vl"
        )

        def get(key: str) -> Any:
            return config[key] if config.get(key) is not None else defaults[key]

        return cls(
            family=family,
            **_common(config, defaults),
            min_pixels=min_pixels,
            max_pixels=max_pixels,
            do_sample_frames=bool(get("do_sample_frames")),
            fps=config.get("fps", base.fps),
            num_frames=config.get("num_frames", base.num_frames),
            min_frames=int(get("min_frames")),
            max_frames=int(get("max_frames")),
            max_video_tokens=int(get("max_video_tokens")),
            cap_pixels_per_frame=bool(config.get("cap_pixels_per_frame") or False),
        )


Budgeted = TypeVar("Budgeted", QwenImageConfig, QwenVideoConfig)


def lower_pixel_budget(config: Budgeted, min_pixels: int | None, max_pixels: int | None, *, prefix: str = "",
                       budget: str = "pixel budget", hint: str = "") -> Budgeted:
    """``config`` with a request's ``min_pixels`` / ``max_pixels`` (None: the model's), which may only lower it.

    ``prefix`` is the kwargs' prefix (``"video_"``), ``budget`` what the model's ``max_pixels`` is called in the
    error, ``hint`` what the error adds after "a request may only lower it".

    Raises:
      ValueError: naming the ``mm_processor_kwargs`` field: not a positive int, ``max_pixels`` above the
        model's, or ``min_pixels`` above ``max_pixels``.
    """
    for name, value in ((f"{prefix}min_pixels", min_pixels), (f"{prefix}max_pixels", max_pixels)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"mm_processor_kwargs {name} must be a positive int, got {value!r}")
    if max_pixels is not None and max_pixels > config.max_pixels:
        raise ValueError(f"mm_processor_kwargs {prefix}max_pixels={max_pixels} is above the model's {budget} "
                         f"({config.max_pixels}); a request may only lower it{hint}")
    request = {k: v for k, v in (("min_pixels", min_pixels), ("max_pixels", max_pixels)) if v is not None}
    if not request:
        return config
    config = dataclasses.replace(config, **request)
    if config.min_pixels > config.max_pixels:
        raise ValueError(f"mm_processor_kwargs {prefix}min_pixels={config.min_pixels} is above "
                         f"{prefix}max_pixels={config.max_pixels}")
    return config
