"""transformers' own Qwen-VL processors as the reference, runnable here without torchvision.

torchvision cannot be installed where the tests run (only CUDA wheels exist for
this torch), so transformers' video processors and its torchvision image
processor fail to import. ``torchvision_stub`` puts a minimal ``torchvision``
in ``sys.modules`` while those modules import: the few functions they call
(``resize``, ``normalize``, ``grayscale_to_rgb``, ``InterpolationMode``) are
torchvision 0.2x's code paths for CPU tensors, re-typed here: ``resize`` is
``resize_image``'s call of ``torch.nn.functional.interpolate(antialias=True)``
(uint8 stays uint8 for bilinear and bicubic on CPU, like torchvision's
``_do_native_uint8_resize_on_cpu``), ``normalize`` is ``normalize_image``. So
the reference pixels come from torch's own kernel, not from mmjax's code.

The stub leaves ``sys.modules`` as it found it once the imports are done, and
``transformers.utils.is_torchvision_available()`` keeps answering False (it was
cached when transformers was imported), so nothing else in the test session
sees a torchvision.
"""

from __future__ import annotations

import contextlib
import enum
import sys
import types
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import transformers  # noqa: F401  (imported before the stub: its availability checks must not see it)
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast
from transformers.image_utils import PILImageResampling
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil


class InterpolationMode(enum.Enum):
    NEAREST = "nearest"
    NEAREST_EXACT = "nearest-exact"
    BILINEAR = "bilinear"
    BICUBIC = "bicubic"
    BOX = "box"
    HAMMING = "hamming"
    LANCZOS = "lanczos"


def _resize(
    image: torch.Tensor, size: list[int], interpolation=InterpolationMode.BILINEAR, max_size=None, antialias=True
) -> torch.Tensor:
    """torchvision.transforms.v2.functional.resize_image for a CPU tensor and an explicit (height, width)."""
    assert max_size is None and len(size) == 2
    shape = image.shape
    channels, old_height, old_width = shape[-3:]
    new_height, new_width = size
    if (new_height, new_width) == (old_height, old_width):
        return image
    modes = (InterpolationMode.BILINEAR, InterpolationMode.BICUBIC)
    align_corners = False if interpolation in modes else None
    antialias = bool(antialias) and interpolation in modes
    dtype = image.dtype
    acceptable = [torch.float32, torch.float64] + ([torch.uint8] if interpolation in modes else [])
    image = image.reshape(-1, channels, old_height, old_width)
    need_cast = dtype not in acceptable
    if need_cast:
        image = image.to(torch.float32)
    image = F.interpolate(
        image,
        size=[new_height, new_width],
        mode=interpolation.value,
        align_corners=align_corners,
        antialias=antialias,
    )
    if need_cast:
        image = image.round_().to(dtype)
    return image.reshape(shape[:-3] + (channels, new_height, new_width))


def _normalize(image: torch.Tensor, mean, std, inplace: bool = False) -> torch.Tensor:
    """torchvision.transforms.v2.functional.normalize_image."""
    mean = torch.as_tensor(mean, dtype=image.dtype).view(-1, 1, 1)
    std = torch.as_tensor(std, dtype=image.dtype).view(-1, 1, 1)
    image = image.sub_(mean) if inplace else image.sub(mean)
    return image.div_(std)


def _grayscale_to_rgb(image: torch.Tensor) -> torch.Tensor:
    return image if image.shape[-3] != 1 else image.repeat(*([1] * (image.ndim - 3)), 3, 1, 1)


def _stub_modules() -> dict[str, types.ModuleType]:
    torchvision = types.ModuleType("torchvision")
    torchvision.__version__ = "0.28.0"
    transforms = types.ModuleType("torchvision.transforms")
    transforms.InterpolationMode = InterpolationMode
    v2 = types.ModuleType("torchvision.transforms.v2")
    functional = types.ModuleType("torchvision.transforms.v2.functional")
    functional.resize = _resize
    functional.normalize = _normalize
    functional.grayscale_to_rgb = _grayscale_to_rgb
    functional.InterpolationMode = InterpolationMode
    torchvision.transforms, transforms.v2, v2.functional = transforms, v2, functional
    return {m.__name__: m for m in (torchvision, transforms, v2, functional)}


_PIL_TO_TORCH = {
    PILImageResampling.BILINEAR: InterpolationMode.BILINEAR,
    PILImageResampling.BICUBIC: InterpolationMode.BICUBIC,
}


@contextlib.contextmanager
def torchvision_stub() -> Iterator[types.ModuleType]:
    """The stub in ``sys.modules`` for the duration; yields its ``transforms.v2.functional``."""
    stubs = _stub_modules()
    saved = {name: sys.modules.get(name) for name in stubs}
    sys.modules.update(stubs)
    try:
        yield stubs["torchvision.transforms.v2.functional"]
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


_TORCH_CLASSES: dict[str, type] = {}


def torch_classes() -> dict[str, type]:
    """transformers' torchvision-backed classes: Qwen2VLImageProcessor, Qwen2VLVideoProcessor, Qwen3VLVideoProcessor."""
    if not _TORCH_CLASSES:
        import transformers.image_processing_backends as backends
        import transformers.video_processing_utils as video_utils

        with torchvision_stub() as functional:
            # these modules bound ``tvF`` only if torchvision was there when they were imported
            backends.tvF = functional
            backends.pil_torch_interpolation_mapping = _PIL_TO_TORCH
            video_utils.tvF = functional
            from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor
            from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor
            from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor
        _TORCH_CLASSES.update(
            Qwen2VLImageProcessor=Qwen2VLImageProcessor,
            Qwen2VLVideoProcessor=Qwen2VLVideoProcessor,
            Qwen3VLVideoProcessor=Qwen3VLVideoProcessor,
        )
    return _TORCH_CLASSES


def pil_image_processor(**kwargs: Any) -> Qwen2VLImageProcessorPil:
    """transformers' default Qwen-VL image processor here (no torchvision): the PIL backend."""
    return Qwen2VLImageProcessorPil(**kwargs)


def torch_image_processor(**kwargs: Any):
    return torch_classes()["Qwen2VLImageProcessor"](**kwargs)


def video_processor(family: str, **kwargs: Any):
    """transformers' video processor of ``family`` ("qwen2_vl" or "qwen3_vl"), with the cap warning silenced."""
    name = {"qwen2_vl": "Qwen2VLVideoProcessor", "qwen3_vl": "Qwen3VLVideoProcessor"}[family]
    kwargs.setdefault("cap_pixels_per_frame", False)
    return torch_classes()[name](**kwargs)


def run_video_processor(processor, frames: np.ndarray, source_fps: float | None) -> dict[str, Any]:
    """``processor`` on one ``[F, Y, X, 3]`` video; ``source_fps`` as vLLM passes it, in the video's metadata."""
    metadata = None
    if source_fps is not None:
        metadata = {"total_num_frames": len(frames), "fps": source_fps, "frames_indices": list(range(len(frames)))}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return processor(frames, video_metadata=metadata, return_metadata=True, input_data_format="channels_last")


QWEN_SPECIAL_TOKENS = ("<|endoftext|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")


def make_qwen_tokenizer() -> PreTrainedTokenizerFast:
    """A tiny byte-level BPE tokenizer with the Qwen-VL special tokens, so decode(encode(text)) == text."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=list(QWEN_SPECIAL_TOKENS), initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(["<0.5 seconds> describe the video 0123456789"], trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
