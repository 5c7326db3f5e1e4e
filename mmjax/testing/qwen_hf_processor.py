"""transformers' own Qwen-VL processor for a checkpoint directory, where torchvision is missing.

transformers 5.x has no torchvision-free video processor for Qwen-VL, and
``ProcessorMixin.__init__`` checks every sub-processor's class: without
torchvision ``VideoProcessorMixin`` is not among the names it looks up, and the
fallback lookup fails on the dummy ``VIDEO_PROCESSOR_MAPPING``, so no
``Qwen2_5_VLProcessor`` / ``Qwen3VLProcessor`` can be built, not even for images.

``load_hf_processor`` makes the class visible to that check only while the
processor is built, and passes a ``VideoConfigStandIn`` as the video processor:
it carries the directory's video config (so the processor saves it as the real
one would be saved) and refuses to process a video. Everything else, the
processor class, the tokenizer, the image processor (the PIL backend,
``Qwen2VLImageProcessorPil``) and the chat template, ``AutoProcessor`` loads
from the directory as it would anywhere.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from typing import Any

from transformers import processing_utils
from transformers.video_processing_utils import VideoProcessorMixin


class VideoConfigStandIn(VideoProcessorMixin):
    """A video processor config without the video processor: serializes like it, processes nothing."""

    def __init__(self, **config: Any) -> None:
        if "video_processor_type" not in config:
            raise ValueError("the video config has no video_processor_type")
        super().__init__(**config)

    def to_dict(self) -> dict[str, Any]:
        config = super().to_dict()
        config["video_processor_type"] = self.video_processor_type  # the real class, not this one
        return config

    def preprocess(self, videos: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(
            f"{self.video_processor_type} needs torchvision, which is not installed: "
            "this stand-in only holds its config"
        )


@contextlib.contextmanager
def video_processors_checkable() -> Iterator[None]:
    """While open, ``ProcessorMixin`` can check a video processor's class without torchvision."""
    module = processing_utils.transformers_module
    if hasattr(module, "VideoProcessorMixin"):  # torchvision is there, or someone else opened this
        yield
        return
    module.VideoProcessorMixin = VideoProcessorMixin
    try:
        yield
    finally:
        del module.VideoProcessorMixin


def video_config(path: str | os.PathLike) -> dict[str, Any]:
    """The video processor config of a checkpoint: the Hub's file, else ``processor_config.json``'s entry."""
    hub_file = os.path.join(path, "video_preprocessor_config.json")
    if os.path.exists(hub_file):
        with open(hub_file, encoding="utf-8") as f:
            return json.load(f)
    with open(os.path.join(path, "processor_config.json"), encoding="utf-8") as f:
        return json.load(f)["video_processor"]


def load_hf_processor(path: str | os.PathLike):
    """transformers' ``AutoProcessor`` for ``path``, with ``VideoConfigStandIn`` as its video processor."""
    from transformers import AutoProcessor

    with video_processors_checkable():
        processor = AutoProcessor.from_pretrained(path, video_processor=VideoConfigStandIn(**video_config(path)))
    # from_pretrained hands its kwargs to the tokenizer too, which would then try to save the stand-in
    processor.tokenizer.init_kwargs.pop("video_processor", None)
    return processor
