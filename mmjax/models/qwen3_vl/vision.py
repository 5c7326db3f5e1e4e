"""Qwen3-VL vision tower: transformers' ``Qwen3VLVisionModel`` in Flax NNX.

Patches -> a linear patch embedding (``Conv3d`` with bias) plus a learned
position embedding resampled bilinearly to each item's grid -> blocks of
LayerNorm, 2-D rotary attention over each whole frame and a GELU MLP -> the
2x2 patch merger. DeepStack: after each block of ``deepstack_visual_indexes``
a merger of its own (LayerNorm over the concatenated merge unit) turns that
block's output into features the decoder adds to its first layers.

As Qwen2.5-VL's tower (``mmjax.models.qwen2_5_vl.vision``, whose attention and
patch embedding it shares) one call packs several items into a bucket of ``P``
rows with a host-computed layout (``vision_layout.vision_layout``), so
``vision_forward`` compiles once per bucket.

Shape letters: ``P`` packed patch rows, ``merged`` merge units (``P / merge**2``),
``patch_dim`` pixels of a patch, ``E`` tower width, ``F`` MLP width, ``D`` output
(decoder) width, ``H`` head dimension.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from flax import nnx

from mmjax.models.common.layers import ACTIVATIONS, check_activation
from mmjax.models.common.linear import Linear
from mmjax.models.common.patch_embed import PatchEmbed
from mmjax.models.common.segment_attention import Segments
from mmjax.models.common.vision_attention import VisionAttention, rotary_cos_sin, rotary_inv_freq
from mmjax.models.qwen3_vl.vision_layout import VisionLayout
from mmjax.types import Array, Float

_NORM_EPS = 1e-6  # transformers hard-codes the vision norms' epsilon


@dataclasses.dataclass(frozen=True, kw_only=True)
class Qwen3VisionConfig:
    """The fields of transformers' ``Qwen3VLVisionConfig`` that the forward uses."""

    hidden_size: int
    intermediate_size: int
    depth: int
    num_heads: int
    out_hidden_size: int
    num_position_embeddings: int
    deepstack_visual_indexes: tuple[int, ...]
    patch_size: int = 16
    temporal_patch_size: int = 2
    spatial_merge_size: int = 2
    in_channels: int = 3
    hidden_act: str = "gelu_pytorch_tanh"
    rope_theta: float = 10000.0

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def patch_dim(self) -> int:
        return self.in_channels * self.temporal_patch_size * self.patch_size**2

    @property
    def position_side(self) -> int:
        """Side of the square learned position grid."""
        return math.isqrt(self.num_position_embeddings)

    @classmethod
    def from_hf(cls, hf) -> "Qwen3VisionConfig":
        """Build from a transformers ``Qwen3VLVisionConfig``; refuse what we cannot run."""
        rope = getattr(hf, "rope_parameters", None) or {}
        if rope.get("rope_type", "axial") != "axial":
            raise NotImplementedError(
                f"vision_config.rope_parameters.rope_type={rope['rope_type']!r} is not supported; expected 'axial'"
            )
        if math.isqrt(hf.num_position_embeddings) ** 2 != hf.num_position_embeddings:
            raise ValueError(f"vision_config.num_position_embeddings={hf.num_position_embeddings} is not a square")
        indexes = tuple(hf.deepstack_visual_indexes)
        if len(set(indexes)) != len(indexes) or any(not 0 <= i < hf.depth for i in indexes):
            raise ValueError(f"vision_config.deepstack_visual_indexes={list(indexes)}: repeated, or not a block")
        return cls(
            hidden_size=hf.hidden_size,
            intermediate_size=hf.intermediate_size,
            depth=hf.depth,
            num_heads=hf.num_heads,
            out_hidden_size=hf.out_hidden_size,
            num_position_embeddings=hf.num_position_embeddings,
            deepstack_visual_indexes=indexes,
            patch_size=hf.patch_size,
            temporal_patch_size=hf.temporal_patch_size,
            spatial_merge_size=hf.spatial_merge_size,
            in_channels=hf.in_channels,
            hidden_act=check_activation(hf.hidden_act, "vision_config.hidden_act"),
            rope_theta=float(rope.get("rope_theta", 10000.0)),
        )


def _layer_norm(dim: int, param_dtype: jnp.dtype, rngs: nnx.Rngs) -> nnx.LayerNorm:
    # Two-pass variance, as torch computes it (flax's fast E[x^2] - E[x]^2 loses digits).
    return nnx.LayerNorm(dim, epsilon=_NORM_EPS, use_fast_variance=False, param_dtype=param_dtype, rngs=rngs)


class VisionMLP(nnx.Module):
    def __init__(self, cfg: Qwen3VisionConfig, *, param_dtype: jnp.dtype, rngs: nnx.Rngs):
        self.linear_fc1 = Linear(cfg.hidden_size, cfg.intermediate_size, param_dtype=param_dtype, rngs=rngs)
        self.linear_fc2 = Linear(cfg.intermediate_size, cfg.hidden_size, param_dtype=param_dtype, rngs=rngs)
        self.act = ACTIVATIONS[cfg.hidden_act]

    def __call__(self, x: Float[Array, "P E"]) -> Float[Array, "P E"]:
        return self.linear_fc2(self.act(self.linear_fc1(x)))


class VisionBlock(nnx.Module):
    def __init__(self, cfg: Qwen3VisionConfig, *, param_dtype: jnp.dtype, rngs: nnx.Rngs):
        self.norm1 = _layer_norm(cfg.hidden_size, param_dtype, rngs)
        self.norm2 = _layer_norm(cfg.hidden_size, param_dtype, rngs)
        self.attn = VisionAttention(cfg.hidden_size, cfg.num_heads, param_dtype=param_dtype, rngs=rngs)
        self.mlp = VisionMLP(cfg, param_dtype=param_dtype, rngs=rngs)

    def __call__(
        self, x: Float[Array, "P E"], cos: Float[Array, "P H"], sin: Float[Array, "P H"], segments: Segments
    ) -> Float[Array, "P E"]:
        x = x + self.attn(self.norm1(x), cos, sin, segments)
        return x + self.mlp(self.norm2(x))


class PatchMerger(nnx.Module):
    """LayerNorm, concatenate each merge unit's patches, ``linear_fc2(gelu(linear_fc1(.)))``.

    ``postshuffle``: the DeepStack mergers normalise the concatenated unit instead of each patch.
    """

    def __init__(self, cfg: Qwen3VisionConfig, *, postshuffle: bool, param_dtype: jnp.dtype, rngs: nnx.Rngs):
        wide = cfg.hidden_size * cfg.spatial_merge_size**2
        self.postshuffle = postshuffle
        self.norm = _layer_norm(wide if postshuffle else cfg.hidden_size, param_dtype, rngs)
        self.linear_fc1 = Linear(wide, wide, param_dtype=param_dtype, rngs=rngs)
        self.linear_fc2 = Linear(wide, cfg.out_hidden_size, param_dtype=param_dtype, rngs=rngs)

    def __call__(self, x: Float[Array, "P E"]) -> Float[Array, "merged D"]:
        wide = self.linear_fc1.in_features
        x = self.norm(x.reshape(-1, wide)) if self.postshuffle else self.norm(x).reshape(-1, wide)
        return self.linear_fc2(ACTIVATIONS["gelu"](self.linear_fc1(x)))  # torch's nn.GELU(): exact erf


class Qwen3VisionModel(nnx.Module):
    """``(patches, layout) -> (merged embeddings, DeepStack features)``: the Qwen3-VL tower over one bucket."""

    def __init__(self, cfg: Qwen3VisionConfig, *, param_dtype: jnp.dtype = jnp.float32, rngs: nnx.Rngs):
        self.config = cfg
        self.patch_embed = PatchEmbed(cfg.in_channels, cfg.temporal_patch_size, cfg.patch_size, cfg.hidden_size,
                                      use_bias=True, param_dtype=param_dtype, rngs=rngs)
        self.pos_embed = nnx.Embed(cfg.num_position_embeddings, cfg.hidden_size, param_dtype=param_dtype, rngs=rngs)
        self.blocks = nnx.List([VisionBlock(cfg, param_dtype=param_dtype, rngs=rngs) for _ in range(cfg.depth)])
        self.merger = PatchMerger(cfg, postshuffle=False, param_dtype=param_dtype, rngs=rngs)
        self.deepstack_merger_list = nnx.List([
            PatchMerger(cfg, postshuffle=True, param_dtype=param_dtype, rngs=rngs)
            for _ in cfg.deepstack_visual_indexes
        ])

    def __call__(
        self, patches: Float[Array, "P patch_dim"], layout: VisionLayout
    ) -> tuple[Float[Array, "merged D"], list[Float[Array, "merged D"]]]:
        """The merged embeddings of the packed items and their DeepStack features.

        Args:
          patches: the processor's ``pixel_values`` of the items, concatenated, then zero rows up to the bucket.
          layout: ``vision_layout`` of the items' grids for this bucket.

        Returns:
          ``(embeddings, deepstack)``: one row per merge unit in placeholder order
          (rows past the items' are zeros); ``deepstack`` one such array per
          ``deepstack_visual_indexes`` entry, in block order (transformers' list).
        """
        cfg = self.config
        unit_valid = layout.valid[:: cfg.spatial_merge_size**2, None]
        taps = self.pos_embed.embedding[...][layout.pos_indices].astype(jnp.float32)
        pos = jnp.einsum("PjE,Pj->PE", taps, layout.pos_weights.astype(jnp.float32))  # j: taps; float32, as HF
        x = self.patch_embed(patches)
        x = x + pos.astype(x.dtype)
        x = jnp.where(layout.valid[:, None], x, 0)  # no input on a padding row (not even a NaN) reaches a real row
        cos, sin = rotary_cos_sin(layout.rotary_ids, rotary_inv_freq(cfg.head_dim, cfg.rope_theta))
        frames = Segments(layout.frame_segments, layout.valid)
        deepstack = []
        for i, block in enumerate(self.blocks):
            x = block(x, cos, sin, frames)
            if i in cfg.deepstack_visual_indexes:
                merger = self.deepstack_merger_list[cfg.deepstack_visual_indexes.index(i)]
                deepstack.append(jnp.where(unit_valid, merger(x), 0))
        return jnp.where(unit_valid, self.merger(x), 0), deepstack


@functools.partial(jax.jit, static_argnums=0)
def vision_forward(
    graphdef: nnx.GraphDef, state: nnx.State, patches: Float[Array, "P patch_dim"], layout: VisionLayout
) -> tuple[Float[Array, "merged D"], list[Float[Array, "merged D"]]]:
    """The pure, jitted tower: ``graphdef, state = nnx.split(tower)`` once, then call this (one program per ``P``)."""
    return nnx.merge(graphdef, state)(patches, layout)
