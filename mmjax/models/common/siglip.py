"""SigLIP vision tower (post-LayerNorm ViT, no class token), as used by Gemma 3.

Mirrors transformers' ``SiglipVisionModel`` without its pooling head (Gemma 3's
``vision_use_head`` is false): a patch convolution with a bias, learned position
embeddings for the patches alone, the CLIP encoder layers (the same modules and
weight names: ``mmjax.models.common.clip``), then ``post_layernorm``.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
from flax import nnx

from mmjax.models.common.clip import CLIPEncoderLayer, CLIPVisionConfig
from mmjax.models.common.layers import check_activation
from mmjax.types import Array, Float


@dataclasses.dataclass(frozen=True, kw_only=True)
class SiglipVisionConfig(CLIPVisionConfig):
    """The fields of transformers' ``SiglipVisionConfig`` the forward uses (CLIP's, other defaults)."""

    layer_norm_eps: float = 1e-6
    hidden_act: str = "gelu_pytorch_tanh"

    @classmethod
    def from_hf(cls, hf) -> "SiglipVisionConfig":
        """Build from a transformers ``SiglipVisionConfig``; refuse what we cannot run, naming the field."""
        if hf.model_type != "siglip_vision_model":
            raise NotImplementedError(
                f"vision_config.model_type={hf.model_type!r} is not supported; expected 'siglip_vision_model'")
        if getattr(hf, "vision_use_head", False):
            raise NotImplementedError("vision_config.vision_use_head=True (the pooling head) is not supported")
        if hf.hidden_size % hf.num_attention_heads:
            raise ValueError("vision_config.hidden_size must be a multiple of num_attention_heads")
        if hf.image_size % hf.patch_size:
            raise ValueError(f"vision_config.image_size={hf.image_size} must be a multiple of "
                             f"patch_size={hf.patch_size}")
        return cls(
            hidden_size=hf.hidden_size, intermediate_size=hf.intermediate_size, num_layers=hf.num_hidden_layers,
            num_heads=hf.num_attention_heads, image_size=hf.image_size, patch_size=hf.patch_size,
            num_channels=hf.num_channels, layer_norm_eps=hf.layer_norm_eps,
            hidden_act=check_activation(hf.hidden_act, "vision_config.hidden_act"),
        )


class SiglipVisionEmbeddings(nnx.Module):
    def __init__(self, cfg: SiglipVisionConfig, *, param_dtype: jnp.dtype, rngs: nnx.Rngs):
        p = cfg.patch_size
        self.patch_embedding = nnx.Conv(
            cfg.num_channels, cfg.hidden_size, kernel_size=(p, p), strides=(p, p),
            padding="VALID", use_bias=True, param_dtype=param_dtype, rngs=rngs,
        )  # fmt: skip
        self.position_embedding = nnx.Embed(cfg.num_patches, cfg.hidden_size, param_dtype=param_dtype, rngs=rngs)

    def __call__(self, pixel_values: Float[Array, "I C Y X"]) -> Float[Array, "I P E"]:
        # Checkpoints and processors use channels-first images; XLA's conv wants NHWC.
        weights = self.position_embedding.embedding[...]
        images = jnp.transpose(pixel_values, (0, 2, 3, 1)).astype(weights.dtype)
        patches = self.patch_embedding(images)  # I, Y/p, X/p, E
        return patches.reshape(patches.shape[0], -1, patches.shape[-1]) + weights  # row-major, as HF flattens


class SiglipVisionTower(nnx.Module):
    """``pixel_values [I, C, S, S] -> last hidden state [I, P, E]`` after ``post_layernorm``."""

    def __init__(self, cfg: SiglipVisionConfig, *, param_dtype: jnp.dtype = jnp.float32, rngs: nnx.Rngs):
        self.config = cfg
        self.embeddings = SiglipVisionEmbeddings(cfg, param_dtype=param_dtype, rngs=rngs)
        self.layers = nnx.List(
            [CLIPEncoderLayer(cfg, param_dtype=param_dtype, rngs=rngs) for _ in range(cfg.num_layers)])
        self.post_layernorm = nnx.LayerNorm(
            cfg.hidden_size, epsilon=cfg.layer_norm_eps, param_dtype=param_dtype, rngs=rngs)

    def __call__(self, pixel_values: Float[Array, "I C Y X"]) -> Float[Array, "I P E"]:
        y, x = pixel_values.shape[-2:]
        if (y, x) != (self.config.image_size,) * 2:
            size = self.config.image_size
            raise ValueError(f"pixel_values are {y}x{x}, the tower expects {size}x{size}")
        hidden = self.embeddings(pixel_values)
        for layer in self.layers:
            hidden = layer(hidden)
        return self.post_layernorm(hidden)
