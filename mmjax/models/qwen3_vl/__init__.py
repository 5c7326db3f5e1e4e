"""Qwen3-VL (``Qwen3VLForConditionalGeneration``): a vision tower with DeepStack mergers and a Qwen3
decoder with interleaved M-RoPE and per-head q/k norms; images and videos (timestamped per temporal patch)."""

from mmjax.models.qwen3_vl.config import Qwen3VLConfig
from mmjax.models.qwen3_vl.family import QWEN3_VL
from mmjax.models.qwen3_vl.model import Qwen3VLForConditionalGeneration, forward

__all__ = ["QWEN3_VL", "Qwen3VLConfig", "Qwen3VLForConditionalGeneration", "forward"]
