"""LLaVA-1.5: a CLIP tower, a 2-layer projector and a Llama-family decoder (``LLAVA``)."""

from mmjax.models.llava.config import LlavaConfig
from mmjax.models.llava.family import LLAVA, load_llava, save_llava
from mmjax.models.llava.model import (
    LlavaForConditionalGeneration, LlavaMultiModalProjector, check_placeholder_count, forward, merge_image_features,
)  # fmt: skip

__all__ = [
    "LLAVA",
    "LlavaConfig",
    "LlavaForConditionalGeneration",
    "LlavaMultiModalProjector",
    "check_placeholder_count",
    "forward",
    "load_llava",
    "merge_image_features",
    "save_llava",
]
