"""Gemma 3's configs, read from transformers' ``Gemma3Config`` / ``Gemma3TextConfig`` and validated.

``Gemma3TextConfig`` is a ``DecoderConfig`` (what the engine, the KV cache and the
mesh read: layers, heads, head dim, each layer's window) with Gemma's own fields:
the attention scale ``query_pre_attn_scalar ** -0.5``, the sliding layers' rotary
base, the final logit soft cap. The global layers' rotary fields are the base
class's (``rope_theta``, ``rope_type``, ``rope_scaling``: Gemma 3 4B+ scale them
linearly by 8). Anything the forward cannot honour is refused by name.
"""

from __future__ import annotations

import dataclasses

from mmjax.models.common.decoder_config import DecoderConfig
from mmjax.models.common.layers import check_activation
from mmjax.models.common.siglip import SiglipVisionConfig

_LAYER_TYPES = ("sliding_attention", "full_attention")
_ROPE_TYPES = ("default", "linear")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Gemma3TextConfig(DecoderConfig):
    """The Gemma 3 decoder's sizes (hashable: a static argument to ``jit``).

    ``layer_windows[i]``: layer i's sliding window, None for a global layer. ``local_rope_theta``:
    the rotary base of the sliding layers (default rope). ``final_logit_softcapping``: logits become
    ``cap * tanh(logits / cap)`` when set.
    """

    query_pre_attn_scalar: float
    local_rope_theta: float = 10_000.0
    final_logit_softcapping: float | None = None

    @property
    def embed_scale(self) -> float:
        """Token embeddings are multiplied by ``sqrt(hidden_size)`` (in the embedding's dtype)."""
        return self.hidden_size**0.5

    def rope_of(self, layer: int) -> DecoderConfig:
        """The rotary fields layer ``layer`` reads (``rope_inv_freq`` takes them): global or local."""
        if self.window_of(layer) is None:
            return self
        return dataclasses.replace(self, rope_theta=self.local_rope_theta, rope_type="default", rope_scaling=())

    @classmethod
    def from_hf(cls, hf, *, tie_word_embeddings: bool | None = None) -> "Gemma3TextConfig":
        """Build from transformers' ``Gemma3TextConfig``; raise naming any field we cannot honour."""
        if hf.model_type != "gemma3_text":
            raise NotImplementedError(f"text_config.model_type={hf.model_type!r} is not supported; "
                                      f"expected 'gemma3_text'")
        for field in ("attn_logit_softcapping",):
            if getattr(hf, field, None) is not None:
                raise NotImplementedError(f"text_config.{field}={getattr(hf, field)} is not supported "
                                          f"(Gemma 3 checkpoints leave it null)")
        if getattr(hf, "use_bidirectional_attention", False):
            raise NotImplementedError("text_config.use_bidirectional_attention=True (an embedding model) "
                                      "is not supported")
        windows = _layer_windows(hf)
        full, local = _rope_parameters(hf)
        tie = hf.tie_word_embeddings if tie_word_embeddings is None else tie_word_embeddings
        return cls(
            vocab_size=hf.vocab_size, hidden_size=hf.hidden_size, intermediate_size=hf.intermediate_size,
            num_layers=hf.num_hidden_layers, num_heads=hf.num_attention_heads,
            num_kv_heads=hf.num_key_value_heads or hf.num_attention_heads,
            head_dim=hf.head_dim or hf.hidden_size // hf.num_attention_heads,
            rms_norm_eps=hf.rms_norm_eps, rope_theta=full[0], rope_type=full[1], rope_scaling=full[2],
            hidden_act=check_activation(hf.hidden_activation, "text_config.hidden_activation"),
            attention_bias=bool(hf.attention_bias), qkv_bias=bool(hf.attention_bias), qk_norm=True,
            tie_word_embeddings=bool(tie), layer_windows=windows,
            query_pre_attn_scalar=float(hf.query_pre_attn_scalar), local_rope_theta=local,
            final_logit_softcapping=hf.final_logit_softcapping,
        )


def _layer_windows(hf) -> tuple[int | None, ...]:
    types = list(hf.layer_types)
    if len(types) != hf.num_hidden_layers or not set(types) <= set(_LAYER_TYPES):
        raise ValueError(f"text_config.layer_types must name one of {_LAYER_TYPES} per layer "
                         f"({hf.num_hidden_layers} layers), got {types}")
    window = hf.sliding_window
    if "sliding_attention" in types and not (isinstance(window, int) and window > 0):
        raise ValueError(f"text_config.sliding_window must be a positive int, got {window!r}")
    return tuple(window if t == "sliding_attention" else None for t in types)


def _rope_parameters(hf) -> tuple[tuple[float, str, tuple[tuple[str, float], ...]], float]:
    """``((global theta, type, scaling params), local theta)`` from ``rope_parameters`` per layer type."""
    params = dict(hf.rope_parameters or {})
    full = dict(params.get("full_attention") or {})
    local = dict(params.get("sliding_attention") or {})
    full_type, local_type = full.pop("rope_type", "default"), local.pop("rope_type", "default")
    if full_type not in _ROPE_TYPES:
        raise NotImplementedError(f"text_config.rope_parameters.full_attention.rope_type={full_type!r} is "
                                  f"not supported; supported: {_ROPE_TYPES}")
    if local_type != "default":
        raise NotImplementedError(f"text_config.rope_parameters.sliding_attention.rope_type={local_type!r} "
                                  f"is not supported; supported: ('default',)")
    full_theta = float(full.pop("rope_theta", 1_000_000.0))
    local_theta = float(local.pop("rope_theta", 10_000.0))
    scaling = tuple(sorted((k, float(v)) for k, v in full.items() if k == "factor"))
    unknown = {k for k in full if k != "factor"} | set(local)
    if full_type == "default":
        unknown |= {k for k, _ in scaling}
        scaling = ()
    if unknown:
        raise NotImplementedError(f"text_config.rope_parameters keys {sorted(unknown)} are not supported")
    return (full_theta, full_type, scaling), local_theta


@dataclasses.dataclass(frozen=True, kw_only=True)
class Gemma3Config:
    """``Gemma3ForConditionalGeneration``'s sizes: the SigLIP tower, the projector and the decoder.

    ``tokens_per_image`` (``mm_tokens_per_image``) soft tokens an image: the tower's
    ``patches_per_side ** 2`` patches average-pooled by ``pool`` on each side.
    """

    vision: SiglipVisionConfig
    text: Gemma3TextConfig
    tokens_per_image: int
    image_token_index: int
    boi_token_index: int
    eoi_token_index: int

    @property
    def patches_per_side(self) -> int:
        return self.vision.image_size // self.vision.patch_size

    @property
    def tokens_per_side(self) -> int:
        return int(round(self.tokens_per_image**0.5))

    @property
    def pool(self) -> int:
        """The average pool's kernel and stride."""
        return self.patches_per_side // self.tokens_per_side

    @classmethod
    def from_hf(cls, hf) -> "Gemma3Config":
        if hf.model_type != "gemma3":
            raise NotImplementedError(f"model_type={hf.model_type!r} is not supported; expected 'gemma3'")
        vision = SiglipVisionConfig.from_hf(hf.vision_config)
        text = Gemma3TextConfig.from_hf(hf.text_config, tie_word_embeddings=getattr(hf, "tie_word_embeddings", None))
        tokens = hf.mm_tokens_per_image
        side = int(round(tokens**0.5))
        patches = vision.image_size // vision.patch_size
        if side * side != tokens or patches % side:
            raise ValueError(f"mm_tokens_per_image={tokens} must be a square whose side divides the tower's "
                             f"{patches} patches a side (image_size / patch_size)")
        return cls(vision=vision, text=text, tokens_per_image=tokens, image_token_index=hf.image_token_index,
                   boi_token_index=hf.boi_token_index, eoi_token_index=hf.eoi_token_index)
