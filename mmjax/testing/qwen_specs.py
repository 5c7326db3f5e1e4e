"""The shapes of the tiny Qwen-VL test checkpoints, and the facts tests need about them.

A spec is a frozen dataclass: ``make_tiny_qwen2_5_vl_checkpoint(path, **overrides)``
writes ``replace(TinyQwen2_5VLSpec(), **overrides)``, and a test that passed the same
overrides reads token ids, patch and merge sizes and pixel budgets from the spec.

Defaults keep every width distinct so a swapped axis cannot go unnoticed: text
width 64 = 4 heads of 16, 2 KV heads, MLP 86; vision width 36 = 3 heads of 12,
MLP 52, 4 blocks; M-RoPE sections (2, 3, 3) over the 8 rotary pairs of a head.
Qwen2.5-VL: 14-px patches, full attention in blocks 1 and 3, the others windowed
in 56-px windows (2x2 merged units, 4x4 patches), images of 4..64 merged tokens.
Qwen3-VL: 16-px patches, an 8x8 grid of learnt position embeddings, DeepStack
features from blocks 0 and 2 into decoder layers 0 and 1 of 3, interleaved M-RoPE,
images of 4..64 merged tokens.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from mmjax.testing.qwen_tokenizer import QWEN2_5_VL_ADDED_TOKENS, QWEN3_VL_ADDED_TOKENS, QwenTokenIds


@dataclass(frozen=True)
class TinyQwenSpec:
    """What the two families share.

    ``text_config`` and ``vision_config`` are extra ``config.json`` fields, set last: the text ones at the
    top level of Qwen2.5-VL's flat file, inside ``text_config`` of Qwen3-VL's.
    """

    family: ClassVar[str]
    added_tokens: ClassVar[tuple[tuple[str, bool], ...]]

    bpe_vocab_size: int = 481  # byte-level BPE entries; the Qwen added tokens follow
    vocab_size: int | None = None  # embedding rows; None: the tokenizer's size (the Hub pads it: 151936)
    hidden_size: int = 64
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 86
    num_layers: int = 2
    mrope_section: tuple[int, int, int] = (2, 3, 3)
    rope_theta: float = 1_000_000.0
    rms_norm_eps: float = 1e-6
    max_position_embeddings: int = 128_000
    tie_word_embeddings: bool = False
    vision_hidden_size: int = 36
    vision_heads: int = 3
    vision_intermediate_size: int = 52
    vision_depth: int = 4
    patch_size: int = 14
    temporal_patch_size: int = 2
    merge_size: int = 2
    min_pixels: int = 4 * 28 * 28  # image budget, in pixels after resizing
    max_pixels: int = 64 * 28 * 28
    video_min_pixels: int = 4 * 28 * 28
    video_max_pixels: int = 16 * 28 * 28
    text_config: Mapping[str, Any] = field(default_factory=dict)
    vision_config: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads or self.num_heads % self.num_kv_heads:
            raise ValueError(f"{self.hidden_size=} {self.num_heads=} {self.num_kv_heads=} do not divide")
        if 2 * sum(self.mrope_section) != self.head_dim:
            raise ValueError(f"mrope_section {self.mrope_section} must sum to head_dim / 2 = {self.head_dim // 2}")
        if (self.vision_hidden_size // self.vision_heads) % 4 or self.vision_hidden_size % self.vision_heads:
            raise ValueError("the vision head width must be a multiple of 4 (2-D rotary over half of it)")
        if self.vocab_size is not None and self.vocab_size < self.tokenizer_size:
            raise ValueError(f"vocab_size {self.vocab_size} is below the tokenizer's {self.tokenizer_size} ids")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def tokenizer_size(self) -> int:
        return self.bpe_vocab_size + len(self.added_tokens)

    @property
    def model_vocab_size(self) -> int:
        return self.tokenizer_size if self.vocab_size is None else self.vocab_size

    @property
    def token_ids(self) -> QwenTokenIds:
        return QwenTokenIds.after(self.bpe_vocab_size)

    @property
    def factor(self) -> int:
        """Resized images are multiples of this many pixels on each side (one merged token)."""
        return self.patch_size * self.merge_size


@dataclass(frozen=True)
class TinyQwen2_5VLSpec(TinyQwenSpec):
    """``Qwen2_5_VLForConditionalGeneration`` in the ``Qwen/Qwen2.5-VL-*-Instruct`` layout."""

    family: ClassVar[str] = "qwen2_5_vl"
    added_tokens: ClassVar[tuple[tuple[str, bool], ...]] = QWEN2_5_VL_ADDED_TOKENS

    fullatt_block_indexes: tuple[int, ...] = (1, 3)
    window_size: int = 56  # pixels: 56 / 14 / 2 = 2 merged units a side
    tokens_per_second: int = 2  # the Hub's value (transformers' default is 4)


@dataclass(frozen=True)
class TinyQwen3VLSpec(TinyQwenSpec):
    """``Qwen3VLForConditionalGeneration`` in the ``Qwen/Qwen3-VL-*-Instruct`` layout."""

    family: ClassVar[str] = "qwen3_vl"
    added_tokens: ClassVar[tuple[tuple[str, bool], ...]] = QWEN3_VL_ADDED_TOKENS

    bpe_vocab_size: int = 483
    num_layers: int = 3
    rope_theta: float = 5_000_000.0
    max_position_embeddings: int = 262_144
    patch_size: int = 16
    min_pixels: int = 4 * 32 * 32  # the processor's size["shortest_edge"]
    max_pixels: int = 64 * 32 * 32  # size["longest_edge"]
    video_min_pixels: int = 4 * 32 * 32  # the Hub's video shortest_edge (4096) itself
    video_max_pixels: int = 256 * 32 * 32  # over all frames of a video, not per frame
    deepstack_visual_indexes: tuple[int, ...] = (0, 2)
    num_position_embeddings: int = 64  # an 8x8 grid, interpolated to each image's

    def __post_init__(self) -> None:
        super().__post_init__()
        if round(self.num_position_embeddings**0.5) ** 2 != self.num_position_embeddings:
            raise ValueError(f"num_position_embeddings must be a square, got {self.num_position_embeddings}")
