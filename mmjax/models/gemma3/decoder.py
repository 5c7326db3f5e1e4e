"""The Gemma 3 decoder: transformers' ``Gemma3TextModel`` + LM head, over the decoder's attention seam.

Differences from the Llama-family decoder (``mmjax.models.common.decoder``), each as transformers has it:

- token embeddings are multiplied by ``sqrt(hidden_size)``, rounded to the embedding's dtype;
- RMSNorm scales by ``1 + weight`` in float32 and casts after (``GemmaRMSNorm``), and each layer has four:
  before and after attention, before and after the MLP;
- each query and key head is RMS-normalised before the rotary embedding (``qk_norm``);
- attention scores are scaled by ``query_pre_attn_scalar ** -0.5`` (not ``head_dim ** -0.5``);
- the MLP is GeGLU (``gelu_pytorch_tanh`` gate);
- a sliding layer attends over its window and turns by the local rotary base, a global layer over the
  whole context with the global base (and its linear scaling); every layer hands its window to ``attend``.

``Gemma3TextModel`` keeps ``LlamaForCausalLM``'s members (``embed``, ``hidden_states``, ``logits``),
so the engine drives both decoders alike.
"""

from __future__ import annotations

import functools
from typing import Any

import jax.numpy as jnp
from flax import nnx

from mmjax.batch_invariant import batch_invariant, elementwise, separately
from mmjax.models.common.attend import Attend
from mmjax.models.common.decoder import LlamaForCausalLM, LlamaMLP
from mmjax.models.common.layers import inverse_root, mean_square
from mmjax.models.common.linear import Linear
from mmjax.models.common.rotary import apply_rope, rope_inv_freq
from mmjax.models.gemma3.config import Gemma3TextConfig
from mmjax.types import Array, Float, Int


class GemmaRMSNorm(nnx.Module):
    """``normalise(x) * (1 + weight)`` in float32, cast to x's dtype after (transformers' ``Gemma3RMSNorm``)."""

    def __init__(self, dim: int, *, eps: float, param_dtype: jnp.dtype, rngs: nnx.Rngs):
        del rngs  # deterministic init (zeros: a scale of one), kept for a uniform constructor
        self.eps = eps
        self.weight = nnx.Param(jnp.zeros((dim,), dtype=param_dtype))

    def __call__(self, x: Float[Array, "*B D"]) -> Float[Array, "*B D"]:
        x32 = x.astype(jnp.float32)
        normed = x32 * inverse_root(mean_square(x32) + self.eps)
        out = (normed * (1.0 + self.weight[...].astype(jnp.float32))).astype(x.dtype)
        return separately(out)[0] if batch_invariant() else out  # a product the residual adds to: rounded first


class Gemma3Attention(nnx.Module):
    def __init__(self, cfg: Gemma3TextConfig, layer: int, *, param_dtype: jnp.dtype, rngs: nnx.Rngs):
        self.config, self.layer = cfg, layer
        self.window = cfg.window_of(layer)
        lin = functools.partial(Linear, use_bias=cfg.attention_bias, param_dtype=param_dtype, rngs=rngs)
        d, h = cfg.hidden_size, cfg.head_dim
        self.q_proj, self.k_proj = lin(d, cfg.num_heads * h), lin(d, cfg.num_kv_heads * h)
        self.v_proj, self.o_proj = lin(d, cfg.num_kv_heads * h), lin(cfg.num_heads * h, d)
        norm = functools.partial(GemmaRMSNorm, h, eps=cfg.rms_norm_eps, param_dtype=param_dtype, rngs=rngs)
        self.q_norm, self.k_norm = norm(), norm()

    def __call__(
        self, x: Float[Array, "B T D"], positions: Int[Array, "B T"], attend: Attend, cache: Any,
        rope_positions: Int[Array, "B T"] | None = None,
    ) -> tuple[Float[Array, "B T D"], Any]:
        cfg = self.config
        heads = lambda t, n: t.reshape(*t.shape[:2], n, cfg.head_dim)  # noqa: E731
        inv_freq = rope_inv_freq(cfg.rope_of(self.layer))  # trace-time constants
        angle_positions = positions if rope_positions is None else rope_positions
        q = apply_rope(self.q_norm(heads(self.q_proj(x), cfg.num_heads)), angle_positions, inv_freq)
        k = apply_rope(self.k_norm(heads(self.k_proj(x), cfg.num_kv_heads)), angle_positions, inv_freq)
        v = heads(self.v_proj(x), cfg.num_kv_heads)
        # Every attention path scales by head_dim ** -0.5; Gemma scales by query_pre_attn_scalar ** -0.5.
        rescale = (cfg.head_dim / cfg.query_pre_attn_scalar) ** 0.5
        if rescale != 1.0:
            q = (q.astype(jnp.float32) * rescale).astype(q.dtype)
        out, cache = attend(q, k, v, positions, cache, window=self.window)
        return self.o_proj(out.reshape(*out.shape[:2], -1)), cache


class Gemma3DecoderLayer(nnx.Module):
    def __init__(self, cfg: Gemma3TextConfig, layer: int, *, param_dtype: jnp.dtype, rngs: nnx.Rngs):
        norm = functools.partial(GemmaRMSNorm, cfg.hidden_size, eps=cfg.rms_norm_eps, param_dtype=param_dtype,
                                 rngs=rngs)
        self.input_layernorm, self.post_attention_layernorm = norm(), norm()
        self.pre_feedforward_layernorm, self.post_feedforward_layernorm = norm(), norm()
        self.self_attn = Gemma3Attention(cfg, layer, param_dtype=param_dtype, rngs=rngs)
        self.mlp = LlamaMLP(cfg, param_dtype=param_dtype, rngs=rngs)

    def __call__(
        self, x: Float[Array, "B T D"], positions: Int[Array, "B T"], attend: Attend, cache: Any,
        rope_positions: Int[Array, "B T"] | None = None,
    ) -> tuple[Float[Array, "B T D"], Any]:
        attended, cache = self.self_attn(self.input_layernorm(x), positions, attend, cache, rope_positions)
        x = x + self.post_attention_layernorm(attended)
        return x + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(x))), cache


class Gemma3TextModel(LlamaForCausalLM):
    """Gemma 3's embeddings, decoder layers, final norm and (tied) LM head; ``LlamaForCausalLM``'s interface."""

    def __init__(self, cfg: Gemma3TextConfig, *, param_dtype: jnp.dtype = jnp.float32, rngs: nnx.Rngs):
        self.config = cfg
        self.embed_tokens = nnx.Embed(cfg.vocab_size, cfg.hidden_size, param_dtype=param_dtype, rngs=rngs)
        self.layers = nnx.List(
            [Gemma3DecoderLayer(cfg, i, param_dtype=param_dtype, rngs=rngs) for i in range(cfg.num_layers)])
        self.norm = GemmaRMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps, param_dtype=param_dtype, rngs=rngs)
        if not cfg.tie_word_embeddings:
            self.lm_head = Linear(cfg.hidden_size, cfg.vocab_size, use_bias=False, param_dtype=param_dtype,
                                      rngs=rngs)

    def embed(self, input_ids: Int[Array, "B T"]) -> Float[Array, "B T D"]:
        """``embedding * sqrt(D)`` (the scale rounded to the embedding's dtype); ids past the vocabulary (an
        image soft token a small checkpoint does not hold) read row 0, as transformers does."""
        ids = jnp.where(input_ids < self.config.vocab_size, input_ids, 0)
        embeds = self.embed_tokens(ids)
        scaled = embeds * jnp.asarray(self.config.embed_scale, embeds.dtype)
        return separately(scaled)[0] if batch_invariant() else scaled  # the residual adds to it: rounded first

    def logits(self, hidden: Float[Array, "*B D"]) -> Float[Array, "*B V"]:
        """The LM head in float32, soft-capped (``cap * tanh(logits / cap)``) when the config says so."""
        logits = super().logits(hidden)
        cap = self.config.final_logit_softcapping
        if cap is None:
            return logits
        return (elementwise("tanh", logits / cap) if batch_invariant() else jnp.tanh(logits / cap)) * cap
