"""The shapes of the tiny Gemma 3 test checkpoints, and the facts tests need about them.

A spec is a frozen dataclass: ``make_tiny_gemma3_checkpoint(path, **overrides)`` writes
``replace(TinyGemma3Spec(), **overrides)``, and a test that passed the same overrides reads token ids,
image size and soft-token counts from the spec.

Defaults (``TinyGemma3TextSpec``, the decoder; ``TinyGemma3Spec`` adds the SigLIP tower): text width 64,
4 query heads and 2 KV heads of 16, ``query_pre_attn_scalar`` 24 (not the head width), MLP 88, 6 layers,
sliding (window 8, local RoPE base 10^4) except layers 2 and 5 (full attention, base 10^6 with a linear
RoPE scaling of 8: ``google/gemma-3-4b-it``'s); the vocabulary is the tokenizer's, padded to a multiple of
64 as the Hub pads 262145 ids to 262208 embedding rows. SigLIP: 32 x 32 images of 4-px patches (8 x 8),
width 36 = 3 heads of 12, MLP 52, 2 layers, pooled 2 x 2 into 16 soft tokens an image.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mmjax.testing.gemma3_tokenizer import GemmaTokenIds, build_gemma_tokenizer

SLIDING, FULL = "sliding_attention", "full_attention"


@dataclass(frozen=True)
class TinyGemma3TextSpec:
    """The decoder (``Gemma3ForCausalLM``, ``google/gemma-3-1b-it``'s layout).

    ``text_config``: extra fields of the text config, set last (e.g. ``{"final_logit_softcapping": 30.0}``).
    """

    num_pieces: int = 120  # learnt BPE pieces of the tokenizer
    vocab_size: int | None = None  # embedding rows; None: the tokenizer's size padded to a multiple of 64
    hidden_size: int = 64
    num_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int = 16
    query_pre_attn_scalar: int = 24
    intermediate_size: int = 88
    layer_types: tuple[str, ...] = (SLIDING, SLIDING, FULL, SLIDING, SLIDING, FULL)
    sliding_window: int = 8
    rope_theta: float = 1_000_000.0  # full-attention layers
    rope_local_base_freq: float = 10_000.0  # sliding layers
    rope_scaling: Mapping[str, Any] | None = field(default_factory=lambda: {"factor": 8.0, "rope_type": "linear"})
    rms_norm_eps: float = 1e-6
    max_position_embeddings: int = 131_072
    tie_word_embeddings: bool = True
    text_config: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads {self.num_heads} is not a multiple of num_kv_heads {self.num_kv_heads}")
        if set(self.layer_types) - {SLIDING, FULL}:
            raise ValueError(f"layer_types must be {SLIDING!r} or {FULL!r}, got {self.layer_types}")
        if self.vocab_size is not None and self.vocab_size < self.token_ids.size:
            raise ValueError(f"vocab_size {self.vocab_size} is below the tokenizer's {self.token_ids.size} ids")

    @property
    def num_layers(self) -> int:
        return len(self.layer_types)

    @property
    def token_ids(self) -> GemmaTokenIds:
        return _token_ids(self.num_pieces)

    @property
    def model_vocab_size(self) -> int:
        return -(-self.token_ids.size // 64) * 64 if self.vocab_size is None else self.vocab_size


@dataclass(frozen=True)
class TinyGemma3Spec(TinyGemma3TextSpec):
    """``Gemma3ForConditionalGeneration`` in the ``google/gemma-3-4b-it`` layout.

    ``vision_config``: extra SigLIP fields, set last. ``processor``: extra ``preprocessor_config.json``
    fields (e.g. ``{"do_pan_and_scan": True, "pan_and_scan_min_crop_size": 16}``).
    """

    image_size: int = 32
    patch_size: int = 4
    mm_tokens_per_image: int = 16
    vision_hidden_size: int = 36
    vision_heads: int = 3
    vision_intermediate_size: int = 52
    vision_layers: int = 2
    vision_config: Mapping[str, Any] = field(default_factory=dict)
    processor: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__post_init__()
        side = self.image_size // self.patch_size
        tokens_side = round(self.mm_tokens_per_image**0.5)
        if self.image_size % self.patch_size or tokens_side**2 != self.mm_tokens_per_image or side % tokens_side:
            raise ValueError(f"{self.image_size}-px images of {self.patch_size}-px patches do not pool into "
                             f"{self.mm_tokens_per_image} soft tokens (a square whose side divides {side})")
        if self.vision_hidden_size % self.vision_heads:
            raise ValueError(f"vision width {self.vision_hidden_size} is not a multiple of {self.vision_heads} heads")


_TOKEN_IDS: dict[int, GemmaTokenIds] = {}


def _token_ids(num_pieces: int) -> GemmaTokenIds:
    if num_pieces not in _TOKEN_IDS:
        _TOKEN_IDS[num_pieces] = build_gemma_tokenizer(num_pieces)[1]
    return _TOKEN_IDS[num_pieces]
