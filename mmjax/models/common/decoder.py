"""Llama-family decoder (Llama, Vicuna, Mistral, Qwen2, Qwen3): the language model of the VLMs.

RMSNorm, rotary embeddings, grouped-query attention and a SwiGLU MLP, as in
transformers' ``LlamaModel``/``MistralModel``; Qwen3's per-head q/k RMSNorm
(``DecoderConfig.qk_norm``) and DeepStack features added after the first
layers (``hidden_states(..., deepstack=)``) are options, off by default.

The attention computation is a seam (``mmjax.models.common.attend.Attend``) so a
paged KV cache can replace it: each layer takes its own cache and returns its new
one, and ``hidden_states`` returns every layer's new cache beside the hidden states.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp
from flax import nnx

from mmjax.models.common.attend import Attend, dense_attend
from mmjax.models.common.decoder_config import DecoderConfig
from mmjax.models.common.deepstack import DeepStack
from mmjax.models.common.layers import ACTIVATIONS, RMSNorm
from mmjax.models.common.linear import Linear, tied_head_product
from mmjax.models.common.rotary import apply_rope, rope_frequency_axes, rope_inv_freq
from mmjax.types import Array, Float, Int


class LlamaAttention(nnx.Module):
    def __init__(self, cfg: DecoderConfig, layer: int, *, param_dtype: jnp.dtype, rngs: nnx.Rngs):
        self.config, self.layer = cfg, layer
        self.num_heads, self.num_kv_heads, self.head_dim = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        lin = functools.partial(Linear, param_dtype=param_dtype, rngs=rngs)
        qkv_bias = cfg.attention_bias or cfg.qkv_bias
        d, h = cfg.hidden_size, cfg.head_dim
        self.q_proj = lin(d, cfg.num_heads * h, use_bias=qkv_bias)
        self.k_proj = lin(d, cfg.num_kv_heads * h, use_bias=qkv_bias)
        self.v_proj = lin(d, cfg.num_kv_heads * h, use_bias=qkv_bias)
        self.o_proj = lin(cfg.num_heads * h, d, use_bias=cfg.attention_bias)
        if cfg.qk_norm:
            norm = functools.partial(RMSNorm, h, eps=cfg.rms_norm_eps, param_dtype=param_dtype, rngs=rngs)
            self.q_norm, self.k_norm = norm(), norm()

    def __call__(
        self, x: Float[Array, "B T D"], positions: Int[Array, "B T"], attend: Attend, cache: Any,
        rope_positions: Int[Array, "B P T"] | None = None,
    ) -> tuple[Float[Array, "B T D"], Any]:
        """``positions`` index the cache; the rotary angles turn by ``rope_positions`` when given (M-RoPE)."""
        heads = lambda t, n: t.reshape(*t.shape[:2], n, self.head_dim)  # noqa: E731
        inv_freq = rope_inv_freq(self.config)  # trace-time constants, not parameters
        axes = rope_frequency_axes(self.config)
        angle_positions = positions if rope_positions is None else rope_positions
        q, k = heads(self.q_proj(x), self.num_heads), heads(self.k_proj(x), self.num_kv_heads)
        if self.config.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q = apply_rope(q, angle_positions, inv_freq, axes)
        k = apply_rope(k, angle_positions, inv_freq, axes)
        v = heads(self.v_proj(x), self.num_kv_heads)
        out, cache = attend(q, k, v, positions, cache, window=self.config.window_of(self.layer))
        return self.o_proj(out.reshape(*out.shape[:2], -1)), cache


class LlamaMLP(nnx.Module):
    """SwiGLU: ``down(act(gate(x)) * up(x))``."""

    def __init__(self, cfg: DecoderConfig, *, param_dtype: jnp.dtype, rngs: nnx.Rngs):
        self.act = ACTIVATIONS[cfg.hidden_act]
        lin = functools.partial(Linear, use_bias=cfg.mlp_bias, param_dtype=param_dtype, rngs=rngs)
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
        self, x: Float[Array, "B T D"], positions: Int[Array, "B T"], attend: Attend, cache: Any,
        rope_positions: Int[Array, "B P T"] | None = None,
    ) -> tuple[Float[Array, "B T D"], Any]:
        """The layer's output and its new cache (``attend``'s, for this layer)."""
        attended, cache = self.self_attn(self.input_layernorm(x), positions, attend, cache, rope_positions)
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
            self.lm_head = Linear(
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
        rope_positions: Int[Array, "B P T"] | None = None,
        *,
        deepstack: DeepStack | None = None,
    ) -> tuple[Float[Array, "B T D"], tuple[Any, ...]]:
        """Run the decoder layers and the final norm.

        Args:
          positions: each token's index in its sequence (``-1``: padding): where its K/V go.
          attend: the attention (default: dense causal, no cache).
          caches: one cache per layer for ``attend`` (e.g. each layer's ``KVPages``);
            None: no cache (``None`` for every layer).
          rope_positions: the rotary positions when they are not ``positions`` (M-RoPE: ``P = 3``).
          deepstack: features added to the hidden states after each of the first ``deepstack.num_layers``
            layers (Qwen3-VL); None: none.

        Returns:
          ``(hidden states, every layer's new cache)``.
        """
        attend = self.default_attend() if attend is None else attend
        caches = (None,) * len(self.layers) if caches is None else tuple(caches)
        if len(caches) != len(self.layers):
            raise ValueError(f"got {len(caches)} layer caches for a decoder of {len(self.layers)} layers")
        if deepstack is not None and deepstack.num_layers > len(self.layers):
            raise ValueError(f"DeepStack features for {deepstack.num_layers} layers, a decoder of {len(self.layers)}")
        x, new_caches = inputs_embeds, []
        for i, (layer, cache) in enumerate(zip(self.layers, caches)):
            x, cache = layer(x, positions, attend, cache, rope_positions)
            if deepstack is not None and i < deepstack.num_layers:
                x = deepstack.add(x, i)
            new_caches.append(cache)
        return self.norm(x), tuple(new_caches)

    def logits(self, hidden: Float[Array, "*B D"]) -> Float[Array, "*B V"]:
        """The LM head (tied or not), in float32. Apply it only where logits are needed."""
        if self.config.tie_word_embeddings:
            embed = self.embed_tokens  # nnx.Embed.attend's dtype promotion, then the product
            query, embedding = embed.promote_dtype((hidden, embed.embedding[...]), dtype=embed.dtype)
            return tied_head_product(query, embedding).astype(jnp.float32)
        return self.lm_head(hidden).astype(jnp.float32)

    def __call__(
        self,
        inputs_embeds: Float[Array, "B T D"],
        positions: Int[Array, "B T"],
        attend: Attend | None = None,
        rope_positions: Int[Array, "B P T"] | None = None,
    ) -> Float[Array, "B T V"]:
        """Run the decoder (no cache kept); return float32 logits for every position."""
        hidden, _ = self.hidden_states(inputs_embeds, positions, attend, rope_positions=rope_positions)
        return self.logits(hidden)
