"""The validated, hashable Qwen2.5-VL config: the vision tower's, the decoder's and the special tokens."""

from __future__ import annotations

import dataclasses

from mmjax.models.common.decoder_config import DecoderConfig
from mmjax.models.qwen2_5_vl.vision import Qwen2_5_VisionConfig


@dataclasses.dataclass(frozen=True, kw_only=True)
class Qwen2_5_VLConfig:
    """A validated view of a transformers ``Qwen2_5_VLConfig``.

    Attributes:
      image_token_id, video_token_id: the placeholder tokens (``<|image_pad|>``, ``<|video_pad|>``).
      tokens_per_second: temporal positions per second of video (M-RoPE's time interval).
    """

    vision: Qwen2_5_VisionConfig
    text: DecoderConfig
    image_token_id: int
    video_token_id: int
    tokens_per_second: float = 2.0

    @property
    def merge_size(self) -> int:
        return self.vision.spatial_merge_size

    @classmethod
    def from_hf(cls, hf) -> "Qwen2_5_VLConfig":
        """Build from a transformers ``Qwen2_5_VLConfig``; raise naming any unsupported field."""
        if getattr(hf, "model_type", None) != "qwen2_5_vl":
            raise ValueError(f"config is for model_type={getattr(hf, 'model_type', None)!r} "
                             f"(architectures={getattr(hf, 'architectures', None)}), not 'qwen2_5_vl'")
        text = DecoderConfig.from_hf(hf.text_config, tie_word_embeddings=hf.tie_word_embeddings)
        if text.rope_position_axes != 3:
            raise ValueError("text_config.rope_parameters.mrope_section is missing: Qwen2.5-VL's decoder turns "
                             "each token by three positions (temporal, height, width)")
        vision = Qwen2_5_VisionConfig.from_hf(hf.vision_config)
        if vision.out_hidden_size != text.hidden_size:
            raise ValueError(f"vision_config.out_hidden_size={vision.out_hidden_size} must equal the decoder's "
                             f"hidden_size={text.hidden_size}")
        for name in ("image_token_id", "video_token_id"):
            value = getattr(hf, name)
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < text.vocab_size:
                raise ValueError(f"config field {name}={value!r} must be a token id in [0, {text.vocab_size})")
        return cls(vision=vision, text=text, image_token_id=hf.image_token_id, video_token_id=hf.video_token_id,
                   tokens_per_second=float(getattr(hf.vision_config, "tokens_per_second", 2)))
