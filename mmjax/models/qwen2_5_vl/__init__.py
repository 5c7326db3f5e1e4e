"""Qwen2.5-VL (``Qwen2_5_VLForConditionalGeneration``): a windowed vision tower and a Qwen2 decoder with M-RoPE."""

from mmjax.models.qwen2_5_vl.config import Qwen2_5_VLConfig
from mmjax.models.qwen2_5_vl.family import QWEN2_5_VL
from mmjax.models.qwen2_5_vl.model import Qwen2_5_VLForConditionalGeneration, forward

__all__ = ["QWEN2_5_VL", "Qwen2_5_VLConfig", "Qwen2_5_VLForConditionalGeneration", "forward"]
