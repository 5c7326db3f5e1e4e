"""The validated, hashable Qwen3-VL config: the vision tower's, the decoder's and the special tokens."""

from __future__ import annotations

import dataclasses

from mmjax.models.common.decoder_config import DecoderConfig
from mmjax.models.qwen3_vl.vision import Qwen3VisionConfig

#: transformers' ``Qwen3VLTextRotaryEmbedding`` reads this when ``rope_parameters`` has no ``mrope_section``.
DEFAULT_MROPE_SECTION = (24, 20, 20)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Qwen3VLConfig:
    """A validated view of a transformers ``Qwen3VLConfig``.

    Attributes:
      vision: the tower's; ``len(vision.deepstack_visual_indexes)`` decoder layers get DeepStack features.
      text: the decoder's (q/k norm, interleaved M-RoPE).
      image_token_id, video_token_id: the placeholder tokens (``<|image_pad|>``, ``<|video_pad|>``).
      vision_start_token_id, vision_end_token_id: the tokens around each item (and each video frame).
    """

    vision: Qwen3VisionConfig
    text: DecoderConfig
    image_token_id: int
    video_token_id: int
    vision_start_token_id: int
    vision_end_token_id: int

    @property
    def merge_size(self) -> int:
        return self.vision.spatial_merge_size

    @property
    def num_deepstack(self) -> int:
        """DeepStack features per placeholder token (added after decoder layers ``0 .. num_deepstack - 1``)."""
        return len(self.vision.deepstack_visual_indexes)

    @classmethod
    def from_hf(cls, hf) -> Qwen3VLConfig:
        """Build from a transformers ``Qwen3VLConfig``; raise naming any unsupported field."""
        if getattr(hf, "model_type", None) != "qwen3_vl":
            raise ValueError(f"config is for model_type={getattr(hf, 'model_type', None)!r} "
                             f"(architectures={getattr(hf, 'architectures', None)}), not 'qwen3_vl'")
        if getattr(hf.text_config, "model_type", None) != "qwen3_vl_text":
            raise NotImplementedError(f"text_config.model_type={hf.text_config.model_type!r} is not supported; "
                                      f"Qwen3-VL's decoder is 'qwen3_vl_text'")
        text = _text_config(hf)
        vision = Qwen3VisionConfig.from_hf(hf.vision_config)
        if vision.out_hidden_size != text.hidden_size:
            raise ValueError(f"vision_config.out_hidden_size={vision.out_hidden_size} must equal the decoder's "
                             f"hidden_size={text.hidden_size}")
        if len(vision.deepstack_visual_indexes) > text.num_layers:
            raise ValueError(f"vision_config.deepstack_visual_indexes has {len(vision.deepstack_visual_indexes)} "
                             f"entries, more than the decoder's num_hidden_layers={text.num_layers}")
        ids = {}
        for name in ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id"):
            value = getattr(hf, name)
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < text.vocab_size:
                raise ValueError(f"config field {name}={value!r} must be a token id in [0, {text.vocab_size})")
            ids[name] = value
        return cls(vision=vision, text=text, **ids)


def _text_config(hf) -> DecoderConfig:
    """The decoder's config. transformers always interleaves Qwen3-VL's M-RoPE (``mrope_interleaved`` is not
    read) and falls back to ``DEFAULT_MROPE_SECTION``; the top-level ``tie_word_embeddings`` decides tying."""
    text = DecoderConfig.from_hf(hf.text_config, tie_word_embeddings=hf.tie_word_embeddings)
    section = text.mrope_section or DEFAULT_MROPE_SECTION
    if sum(section) != text.head_dim // 2:
        raise ValueError(f"text_config.rope_parameters.mrope_section is missing and transformers' default "
                         f"{list(DEFAULT_MROPE_SECTION)} does not add up to head_dim / 2 = {text.head_dim // 2}")
    return dataclasses.replace(text, mrope_section=tuple(section), mrope_interleaved=True)
