"""The decoder's sizes as a frozen, hashable config, read from a transformers text config.

``DecoderConfig.from_hf`` validates what the forward reads and refuses, by
name, any field mmjax cannot honour (an unknown rope type, a partial rotary
factor); it is hashable so it can be a static argument to ``jit``.
"""

from __future__ import annotations

import dataclasses

from mmjax.models.common.layers import check_activation

_SUPPORTED_TEXT_MODELS = ("llama", "mistral", "qwen2", "qwen2_5_vl_text", "qwen3_vl_text")
#: Qwen2's attention has biases on q, k and v (not on o), whatever ``attention_bias`` says.
_QKV_BIAS_MODELS = ("qwen2", "qwen2_5_vl_text")
#: Qwen3's attention RMS-normalises each query and key head before the rotary embedding.
_QK_NORM_MODELS = ("qwen3_vl_text",)
#: rope_type -> the rope_parameters keys it reads (besides rope_type, rope_theta).
_ROPE_KEYS = {
    "default": (),
    "linear": ("factor",),
    "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"),
}


@dataclasses.dataclass(frozen=True, kw_only=True)
class DecoderConfig:
    """The fields of a transformers ``LlamaConfig``/``MistralConfig``/Qwen2 text config the forward uses.

    ``rope_scaling`` is a sorted tuple of ``(key, value)`` pairs so the config
    stays hashable (a static argument to ``jit``). ``mrope_section`` (Qwen-VL's
    multimodal rotary embedding): how many of the ``H/2`` rotary frequencies read
    the temporal, height and width position; empty for one position per token.
    ``mrope_interleaved``: the frequencies take the three positions in turn
    (Qwen3-VL) instead of in three blocks (Qwen2.5-VL). ``qk_norm``: an RMSNorm
    over each query and key head (weights ``[head_dim]``) before the rotary
    embedding (Qwen3). ``layer_windows``: each layer's sliding window when the layers differ
    (None for a global layer; empty: every layer has ``sliding_window``).
    """

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10_000.0
    rope_type: str = "default"
    rope_scaling: tuple[tuple[str, float], ...] = ()
    hidden_act: str = "silu"
    attention_bias: bool = False
    qkv_bias: bool = False
    mlp_bias: bool = False
    tie_word_embeddings: bool = False
    sliding_window: int | None = None
    mrope_section: tuple[int, ...] = ()
    mrope_interleaved: bool = False
    qk_norm: bool = False
    layer_windows: tuple[int | None, ...] = ()

    def window_of(self, layer: int) -> int | None:
        """Layer ``layer``'s sliding window (None: it attends to the whole context): its entry of
        ``layer_windows`` when the layers differ (Gemma 3), else ``sliding_window``."""
        return self.layer_windows[layer] if self.layer_windows else self.sliding_window

    @property
    def rope_position_axes(self) -> int:
        """Positions per token the rotary embedding reads: 3 with M-RoPE, else 1."""
        return 3 if self.mrope_section else 1

    @classmethod
    def from_hf(cls, hf, *, tie_word_embeddings: bool | None = None) -> "DecoderConfig":
        """Build from a transformers text config; raise naming any field we cannot honour."""
        if hf.model_type not in _SUPPORTED_TEXT_MODELS:
            raise NotImplementedError(
                f"text_config.model_type={hf.model_type!r} is not supported; supported: {_SUPPORTED_TEXT_MODELS}"
            )
        rope_theta, rope_type, rope_scaling, mrope = _rope_fields(hf)
        tie = hf.tie_word_embeddings if tie_word_embeddings is None else tie_word_embeddings
        return cls(
            vocab_size=hf.vocab_size,
            hidden_size=hf.hidden_size,
            intermediate_size=hf.intermediate_size,
            num_layers=hf.num_hidden_layers,
            num_heads=hf.num_attention_heads,
            num_kv_heads=hf.num_key_value_heads or hf.num_attention_heads,
            head_dim=getattr(hf, "head_dim", None) or hf.hidden_size // hf.num_attention_heads,
            rms_norm_eps=hf.rms_norm_eps,
            rope_theta=rope_theta,
            rope_type=rope_type,
            rope_scaling=rope_scaling,
            hidden_act=check_activation(hf.hidden_act, "text_config.hidden_act"),
            attention_bias=bool(getattr(hf, "attention_bias", False)),
            qkv_bias=hf.model_type in _QKV_BIAS_MODELS,
            mlp_bias=bool(getattr(hf, "mlp_bias", False)),
            tie_word_embeddings=bool(tie),
            sliding_window=_sliding_window(hf),
            mrope_section=mrope[0],
            mrope_interleaved=mrope[1],
            qk_norm=hf.model_type in _QK_NORM_MODELS,
        )


def _sliding_window(hf) -> int | None:
    """The window of the decoder's attention: Qwen2 configs carry one they do not use unless
    ``use_sliding_window`` is set (and then only on layers past ``max_window_layers``)."""
    window = getattr(hf, "sliding_window", None)
    if window is None or getattr(hf, "use_sliding_window", True) is False:
        return None
    layer_types = getattr(hf, "layer_types", None)
    if layer_types is not None and "sliding_attention" not in layer_types:
        return None
    if layer_types is not None and "full_attention" in layer_types:
        raise NotImplementedError(f"text_config.layer_types mixes sliding and full attention layers "
                                  f"(sliding_window={window}); mmjax implements one kind for every layer")
    return window


def _rope_fields(hf) -> tuple[float, str, tuple[tuple[str, float], ...], tuple[tuple[int, ...], bool]]:
    """``(rope_theta, rope_type, scaling params, (mrope_section, mrope_interleaved))`` from
    ``rope_parameters``, or raise naming the field."""
    rope = dict(hf.rope_parameters or {})
    mrope = _mrope_fields(hf, rope.pop("mrope_section", None), rope.pop("mrope_interleaved", False))
    rope_type = rope.pop("rope_type", "default")
    if rope_type not in _ROPE_KEYS:
        raise NotImplementedError(
            f"text_config.rope_parameters rope_type={rope_type!r} (rope_scaling) is not supported; "
            f"supported: {tuple(_ROPE_KEYS)}"
        )
    if rope.pop("partial_rotary_factor", 1.0) != 1.0:
        raise NotImplementedError("text_config.partial_rotary_factor != 1 is not supported")
    rope_theta = float(rope.pop("rope_theta", 10_000.0))
    rope.pop("type", None)  # legacy alias of rope_type
    unknown = set(rope) - set(_ROPE_KEYS[rope_type])
    if unknown:
        raise NotImplementedError(
            f"text_config.rope_parameters keys {sorted(unknown)} are not supported for rope_type={rope_type!r}"
        )
    return rope_theta, rope_type, tuple(sorted((k, float(v)) for k, v in rope.items())), mrope


def _mrope_fields(hf, section, interleaved) -> tuple[tuple[int, ...], bool]:
    if section is None:
        return (), False
    half = (getattr(hf, "head_dim", None) or hf.hidden_size // hf.num_attention_heads) // 2
    if (not isinstance(section, (list, tuple)) or len(section) != 3
            or not all(isinstance(n, int) and n >= 0 for n in section) or sum(section) != half):
        raise ValueError(f"text_config.rope_parameters.mrope_section must be 3 ints that add up to head_dim / 2 "
                         f"= {half} (temporal, height, width frequencies), got {section!r}")
    return tuple(section), bool(interleaved)
