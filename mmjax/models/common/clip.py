"""CLIP vision tower (pre-LayerNorm ViT), as used by LLaVA.

Mirrors transformers' ``CLIPVisionModel``: a bias-free patch convolution, a
class embedding, learned position embeddings, ``pre_layrnorm``, then encoder
layers. The tower returns every hidden state so that LLaVA can pick the layer
(``vision_feature_layer``); ``post_layernorm`` is kept as a parameter because
checkpoints carry it, but LLaVA never applies it.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
from flax import nnx

from mmjax.models.common.layers import ACTIVATIONS, check_activation
from mmjax.models.common.linear import Linear
from mmjax.models.common.native_attention import bidirectional_attention
from mmjax.types import Array, Float


@dataclasses.dataclass(frozen=True, kw_only=True)
class CLIPVisionConfig:
    """The fields of transformers' ``CLIPVisionConfig`` that the forward uses."""

    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    image_size: int
    patch_size: int
    num_channels: int = 3
    layer_norm_eps: float = 1e-5
    hidden_act: str = "quick_gelu"

    @property
    def num_patches(self) -> int:
        """Patches per image, without the CLS token."""
        return (self.image_size // self.patch_size) ** 2

    @classmethod
    def from_hf(cls, hf) -> "CLIPVisionConfig":
        """Build from a transformers ``CLIPVisionConfig``; refuse what we cannot run."""
        if hf.model_type != "clip_vision_model":
            raise NotImplementedError(
                f"vision_config.model_type={hf.model_type!r} is not supported; expected 'clip_vision_model'"
            )
        if hf.hidden_size % hf.num_attention_heads:
            raise ValueError("vision_config.hidden_size must be a multiple of num_attention_heads")
        return cls(
            hidden_size=hf.hidden_size,
            intermediate_size=hf.intermediate_size,
            num_layers=hf.num_hidden_layers,
            num_heads=hf.num_attention_heads,
            image_size=hf.image_size,
            patch_size=hf.patch_size,
            num_channels=hf.num_channels,
            layer_norm_eps=hf.layer_norm_eps,
            hidden_act=check_activation(hf.hidden_act, "vision_config.hidden_act"),
        )


class CLIPAttention(nnx.Module):
    """Bidirectional multi-head self-attention over the patches of one image.

    Heads-major (``[I, N, P, H]``) with the softmax's division applied to the
    ``[I, N, P, H]`` output instead of the ``[I, N, P, S]`` weights: on the
    2-core CPU this took the benchmark's CLIP tower (256 wide, 577 patches)
    from 115 to 49 ms per image, since XLA no longer copies the weights into
    another layout for the second product. Inside the engine's encoder programs on one CPU device it runs on
    the CPU attention kernel instead (``mmjax.models.common.native_attention``).
    """

    def __init__(self, cfg: CLIPVisionConfig, *, param_dtype: jnp.dtype, rngs: nnx.Rngs):
        d = cfg.hidden_size
        self.num_heads = cfg.num_heads
        make = lambda: Linear(d, d, param_dtype=param_dtype, rngs=rngs)  # noqa: E731
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = make(), make(), make(), make()

    def __call__(self, x: Float[Array, "I P E"]) -> Float[Array, "I P E"]:
        split = lambda t: t.reshape(*t.shape[:2], self.num_heads, -1)  # noqa: E731
        q, k, v = split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x))  # [I, P, N, H]
        native = bidirectional_attention(q, k, v, q.shape[-1] ** -0.5)  # the engine's, on one CPU device
        if native is not None:
            return self.out_proj(native.reshape(x.shape))
        q, k, v = (t.transpose(0, 2, 1, 3) for t in (q, k, v))  # [I, N, P, H]
        scores = jnp.einsum("INPH,INSH->INPS", q, k, preferred_element_type=jnp.float32)  # S: the key patches
        scores = scores * q.shape[-1] ** -0.5
        weights = jnp.exp(scores - jnp.max(scores, axis=-1, keepdims=True))
        out = jnp.einsum("INPS,INSH->INPH", weights.astype(v.dtype), v, preferred_element_type=jnp.float32)
        out = (out / jnp.sum(weights, axis=-1, keepdims=True)).astype(v.dtype)
        return self.out_proj(out.transpose(0, 2, 1, 3).reshape(x.shape))


class CLIPMLP(nnx.Module):
    def __init__(self, cfg: CLIPVisionConfig, *, param_dtype: jnp.dtype, rngs: nnx.Rngs):
        self.act = ACTIVATIONS[cfg.hidden_act]
        self.fc1 = Linear(cfg.hidden_size, cfg.intermediate_size, param_dtype=param_dtype, rngs=rngs)
        self.fc2 = Linear(cfg.intermediate_size, cfg.hidden_size, param_dtype=param_dtype, rngs=rngs)

    def __call__(self, x: Float[Array, "I P E"]) -> Float[Array, "I P E"]:
        return self.fc2(self.act(self.fc1(x)))


class CLIPEncoderLayer(nnx.Module):
    def __init__(self, cfg: CLIPVisionConfig, *, param_dtype: jnp.dtype, rngs: nnx.Rngs):
        norm = lambda: nnx.LayerNorm(  # noqa: E731
            cfg.hidden_size, epsilon=cfg.layer_norm_eps, param_dtype=param_dtype, rngs=rngs
        )
        self.layer_norm1, self.layer_norm2 = norm(), norm()
        self.self_attn = CLIPAttention(cfg, param_dtype=param_dtype, rngs=rngs)
        self.mlp = CLIPMLP(cfg, param_dtype=param_dtype, rngs=rngs)

    def __call__(self, x: Float[Array, "I P E"]) -> Float[Array, "I P E"]:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class CLIPVisionEmbeddings(nnx.Module):
    def __init__(self, cfg: CLIPVisionConfig, *, param_dtype: jnp.dtype, rngs: nnx.Rngs):
        p = cfg.patch_size
        self.patch_embedding = nnx.Conv(
            cfg.num_channels, cfg.hidden_size, kernel_size=(p, p), strides=(p, p),
            padding="VALID", use_bias=False, param_dtype=param_dtype, rngs=rngs,
        )  # fmt: skip
        self.class_embedding = nnx.Param(jnp.zeros((cfg.hidden_size,), dtype=param_dtype))
        self.position_embedding = nnx.Embed(
            cfg.num_patches + 1, cfg.hidden_size, param_dtype=param_dtype, rngs=rngs
        )

    def __call__(self, pixel_values: Float[Array, "I C Y X"]) -> Float[Array, "I P E"]:
        # Checkpoints and processors use channels-first images; XLA's conv wants NHWC.
        images = jnp.transpose(pixel_values, (0, 2, 3, 1)).astype(self.class_embedding[...].dtype)
        patches = self.patch_embedding(images)  # I, Y/p, X/p, E
        patches = patches.reshape(patches.shape[0], -1, patches.shape[-1])  # row-major, as HF flattens
        cls = jnp.broadcast_to(self.class_embedding[...], (patches.shape[0], 1, patches.shape[-1]))
        return jnp.concatenate([cls, patches], axis=1) + self.position_embedding.embedding[...]


class CLIPVisionTower(nnx.Module):
    """``pixel_values -> hidden states`` of a CLIP ViT, one per layer boundary."""

    def __init__(self, cfg: CLIPVisionConfig, *, param_dtype: jnp.dtype = jnp.float32, rngs: nnx.Rngs):
        self.config = cfg
        norm = lambda: nnx.LayerNorm(  # noqa: E731
            cfg.hidden_size, epsilon=cfg.layer_norm_eps, param_dtype=param_dtype, rngs=rngs
        )
        self.embeddings = CLIPVisionEmbeddings(cfg, param_dtype=param_dtype, rngs=rngs)
        self.pre_layrnorm = norm()  # sic: the checkpoint's spelling
        self.layers = nnx.List(
            [CLIPEncoderLayer(cfg, param_dtype=param_dtype, rngs=rngs) for _ in range(cfg.num_layers)]
        )
        self.post_layernorm = norm()  # loaded, unused by LLaVA (see module docstring)

    def __call__(
        self, pixel_values: Float[Array, "I C Y X"], *, num_layers: int | None = None
    ) -> list[Float[Array, "I P E"]]:
        """Run the tower and return its hidden states.

        Args:
          pixel_values: normalised images, ``Y == X == image_size``.
          num_layers: run only the first ``num_layers`` encoder layers (the
            layers after the deepest one a caller selects are dead compute).

        Returns:
          ``[embeddings after pre_layrnorm, output of layer 1, ..., layer n]``,
          the indexing of transformers' ``hidden_states`` (index 0 is the input
          of the first layer; the last is *before* ``post_layernorm``).
        """
        y, x = pixel_values.shape[-2:]
        if (y, x) != (self.config.image_size,) * 2:
            size = self.config.image_size
            raise ValueError(f"pixel_values are {y}x{x}, the tower expects {size}x{size}")
        hidden = self.pre_layrnorm(self.embeddings(pixel_values))
        states = [hidden]
        for layer in self.layers[: self.config.num_layers if num_layers is None else num_layers]:
            hidden = layer(hidden)
            states.append(hidden)
        return states
