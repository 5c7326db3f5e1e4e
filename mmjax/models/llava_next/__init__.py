"""LLaVA-NeXT: anyres tiles through LLaVA's tower and projector, an unpadded grid with newlines (``LLAVA_NEXT``)."""

from mmjax.models.llava_next.family import LLAVA_NEXT, load_llava_next
from mmjax.models.llava_next.model import (
    LlavaNextConfig, LlavaNextForConditionalGeneration, check_placeholder_count, forward, merge_anyres_features,
)  # fmt: skip

__all__ = [
    "LLAVA_NEXT",
    "LlavaNextConfig",
    "LlavaNextForConditionalGeneration",
    "check_placeholder_count",
    "forward",
    "load_llava_next",
    "merge_anyres_features",
]
