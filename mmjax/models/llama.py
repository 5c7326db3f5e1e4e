"""Llama-family decoder (Llama, Vicuna, Mistral): the language model of LLaVA.

RMSNorm, rotary embeddings, grouped-query attention and a SwiGLU MLP, as in
transformers' ``LlamaModel``/``MistralModel``. The attention computation is a
seam (``mmjax.models.attend.Attend``) so a paged KV cache can replace it: each
layer takes its own cache and returns its new one, and ``hidden_states``
returns every layer's new cache beside the hidden states.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

from mmjax.models.attend import Attend, dense_attend
from mmjax.models.layers import ACTIVATIONS, RMSNorm, check_activation
from mmjax.types import Array, ArrayLike, Float, Int, shape_checked

_SUPPORTED_TEXT_MODELS = ("llama", "mistral")
#: rope_type -> the rope_parameters keys it reads (besides rope_type, rope_theta).
_ROPE_KEYS = {
    "default": (),
    "linear": ("factor",),
    "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"),
}


@dataclasses.dataclass(frozen=True, kw_only=True)
class DecoderConfig:
    """The fields of a transformers ``LlamaConfig``/``MistralConfig`` the forward uses.

    ``rope_scaling`` is a sorted tuple of ``(key, value)`` pairs so the config
    stays hashable (a static argument to ``jit``).
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
    mlp_bias: bool = False
    tie_word_embeddings: bool = False
    sliding_window: int | None = None

    @classmethod
    def from_hf(cls, hf, *, tie_word_embeddings: bool | None = None) -> "DecoderConfig":
        """Build from a transformers text config; raise naming any field we cannot honour."""
        if hf.model_type not in _SUPPORTED_TEXT_MODELS:
            raise NotImplementedError(
                f"text_config.model_type={hf.model_type!r} is not supported; supported: {_SUPPORTED_TEXT_MODELS}"
            )
        rope_theta, rope_type, rope_scaling = _rope_fields(hf)
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
            mlp_bias=bool(getattr(hf, "mlp_bias", False)),
            tie_word_embeddings=bool(tie),
            sliding_window=getattr(hf, "sliding_window", None),
        )


def _rope_fields(hf) -> tuple[float, str, tuple[tuple[str, float], ...]]:
    """``(rope_theta, rope_type, scaling params)`` from ``rope_parameters``, or raise naming the field."""
    rope = dict(hf.rope_parameters or {})
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
    return rope_theta, rope_type, tuple(sorted((k, float(v)) for k, v in rope.items()))


def rope_inv_freq(cfg: DecoderConfig) -> np.ndarray:
    """Inverse rotary frequencies, ``float32[H/2]``, as transformers' ROPE_INIT_FUNCTIONS."""
    dim = cfg.head_dim
    exponents = np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / np.float32(dim)
    inv_freq = (1.0 / (np.float32(cfg.rope_theta) ** exponents)).astype(np.float32)
    params = dict(cfg.rope_scaling)
    if cfg.rope_type == "linear":
        return (inv_freq / np.float32(params["factor"])).astype(np.float32)
    if cfg.rope_type == "llama3":
        return _llama3_inv_freq(inv_freq, params)
    return inv_freq


def _llama3_inv_freq(inv_freq: np.ndarray, p: dict[str, float]) -> np.ndarray:
    # Llama 3.1: keep high frequencies, divide low ones by `factor`, blend in between.
    factor, old_len = p["factor"], p["original_max_position_embeddings"]
    low_wavelen, high_wavelen = old_len / p["low_freq_factor"], old_len / p["high_freq_factor"]
    wavelen = 2 * math.pi / inv_freq
    scaled = np.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - p["low_freq_factor"]) / (p["high_freq_factor"] - p["low_freq_factor"])
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return np.where(is_medium, smoothed, scaled).astype(np.float32)


@shape_checked
def apply_rope(
    x: Float[Array, "B T heads H"], positions: Int[ArrayLike, "B T"], inv_freq: Float[np.ndarray, "H//2"]
) -> Float[Array, "B T heads H"]:
    """Rotate halves (``rotate_half`` convention, not interleaved pairs); ``heads`` is N for q, K for k."""
    angles = positions[..., None].astype(jnp.float32) * jnp.asarray(inv_freq)  # B T H/2
    angles = jnp.concatenate([angles, angles], axis=-1)[:, :, None, :]
    cos, sin = jnp.cos(angles).astype(x.dtype), jnp.sin(angles).astype(x.dtype)
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos + rotated * sin


class LlamaAttention(nnx.Module):
    def __init__(self, cfg: DecoderConfig, layer: int, *, param_dtype: jnp.dtype, rngs: nnx.Rngs):
        self.config, self.layer = cfg, layer
        self.num_heads, self.num_kv_heads, self.head_dim = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        lin = functools.partial(nnx.Linear, use_bias=cfg.attention_bias, param_dtype=param_dtype, rngs=rngs)
        d, h = cfg.hidden_size, cfg.head_dim
        self.q_proj = lin(d, cfg.num_heads * h)
        self.k_proj = lin(d, cfg.num_kv_heads * h)
        self.v_proj = lin(d, cfg.num_kv_heads * h)
        self.o_proj = lin(cfg.num_heads * h, d)

    def __call__(
        self, x: Float[Array, "B T D"], positions: Int[Array, "B T"], attend: Attend, cache: Any
    ) -> tuple[Float[Array, "B T D"], Any]:
        heads = lambda t, n: t.reshape(*t.shape[:2], n, self.head_dim)  # noqa: E731
        inv_freq = rope_inv_freq(self.config)  # a trace-time constant, not a parameter
        q = apply_rope(heads(self.q_proj(x), self.num_heads), positions, inv_freq)
        k = apply_rope(heads(self.k_proj(x), self.num_kv_heads), positions, inv_freq)
        v = heads(self.v_proj(x), self.num_kv_heads)
        out, cache = attend(q, k, v, positions, cache)
        return self.o_proj(out.reshape(*out.shape[:2], -1)), cache


class LlamaMLP(nnx.Module):
    """SwiGLU: ``down(act(gate(x)) * up(x))``."""

    def __init__(self, cfg: DecoderConfig, *, param_dtype: jnp.dtype, rngs: nnx.Rngs):
        self.act = ACTIVATIONS[cfg.hidden_act]
        lin = functools.partial(nnx.Linear, use_bias=cfg.mlp_bias, param_dtype=param_dtype, rngs=rngs)
        self.gate_proj = lin(cfg.hidden_size, cfg.intermediate_size)
        self.up_proj = lin(cfg.hidden_size, cfg.intermediate_size)
        self.down_proj = lin(cfg.intermediate_size, cfg.hidden_size)

    def __call__(self, x: Float[Array, "B T D"]) -> Float[Array, "B T D"]:
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


class LlamaDecoderLayer(nnx.Module):
    def __init__(self, cfg: DecoderConfig, layer: int, *, param_dtype: jnp.dtype, rngs: nnx.Rngs):
        norm = functools.partial(
            RMSNorm, cfg.hidden_size, eps=cfg.rms_norm_eps, param_dtype=param_dtype, rngs=rngs
        )
        self.input_layernorm, self.post_attention_layernorm = norm(), norm()
        self.self_attn = LlamaAttention(cfg, layer, param_dtype=param_dtype, rngs=rngs)
        self.mlp = LlamaMLP(cfg, param_dtype=param_dtype, rngs=rngs)

    def __call__(
        self, x: Float[Array, "B T D"], positions: Int[Array, "B T"], attend: Attend, cache: Any
    ) -> tuple[Float[Array, "B T D"], Any]:
        """The layer's output and its new cache (``attend``'s, for this layer)."""
        attended, cache = self.self_attn(self.input_layernorm(x), positions, attend, cache)
        x = x + attended
        return x + self.mlp(self.post_attention_layernorm(x)), cache


class LlamaForCausalLM(nnx.Module):
    """Embeddings, decoder layers, final norm and LM head.

    ``embed`` is separate from ``__call__`` so a multimodal model can merge its
    image features into the token embeddings before the decoder runs.
    """

    def __init__(self, cfg: DecoderConfig, *, param_dtype: jnp.dtype = jnp.float32, rngs: nnx.Rngs):
        self.config = cfg
        self.embed_tokens = nnx.Embed(cfg.vocab_size, cfg.hidden_size, param_dtype=param_dtype, rngs=rngs)
        self.layers = nnx.List(
            [LlamaDecoderLayer(cfg, i, param_dtype=param_dtype, rngs=rngs) for i in range(cfg.num_layers)]
        )
        self.norm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps, param_dtype=param_dtype, rngs=rngs)
        if not cfg.tie_word_embeddings:
            self.lm_head = nnx.Linear(
                cfg.hidden_size, cfg.vocab_size, use_bias=False, param_dtype=param_dtype, rngs=rngs
            )

    def embed(self, input_ids: Int[Array, "B T"]) -> Float[Array, "B T D"]:
        return self.embed_tokens(input_ids)

    def default_attend(self) -> Attend:
        """Dense causal attention over this step's tokens (prefill without a cache)."""
        return dense_attend(self.config.sliding_window)

    def hidden_states(
        self,
        inputs_embeds: Float[Array, "B T D"],
        positions: Int[Array, "B T"],
        attend: Attend | None = None,
        caches: Sequence[Any] | None = None,
    ) -> tuple[Float[Array, "B T D"], tuple[Any, ...]]:
        """Run the decoder layers and the final norm.

        Args:
          attend: the attention (default: dense causal, no cache).
          caches: one cache per layer for ``attend`` (e.g. each layer's ``KVPages``);
            None: no cache (``None`` for every layer).

        Returns:
          ``(hidden states, every layer's new cache)``.
        """
        attend = self.default_attend() if attend is None else attend
        caches = (None,) * len(self.layers) if caches is None else tuple(caches)
        if len(caches) != len(self.layers):
            raise ValueError(f"got {len(caches)} layer caches for a decoder of {len(self.layers)} layers")
        x, new_caches = inputs_embeds, []
        for layer, cache in zip(self.layers, caches):
            x, cache = layer(x, positions, attend, cache)
            new_caches.append(cache)
        return self.norm(x), tuple(new_caches)

    def logits(self, hidden: Float[Array, "*B D"]) -> Float[Array, "*B V"]:
        """The LM head (tied or not), in float32. Apply it only where logits are needed."""
        if self.config.tie_word_embeddings:
            return self.embed_tokens.attend(hidden).astype(jnp.float32)
        return self.lm_head(hidden).astype(jnp.float32)

    def __call__(
        self,
        inputs_embeds: Float[Array, "B T D"],
        positions: Int[Array, "B T"],
        attend: Attend | None = None,
    ) -> Float[Array, "B T V"]:
        """Run the decoder (no cache kept); return float32 logits for every position."""
        hidden, _ = self.hidden_states(inputs_embeds, positions, attend)
        return self.logits(hidden)
