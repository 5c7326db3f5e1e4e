"""Qwen2.5-VL vision tower: transformers' ``Qwen2_5_VisionTransformerPretrainedModel`` in Flax NNX.

Patches (``temporal_patch_size`` frames of ``patch_size``-square pixels, flattened
by the processor) -> a linear patch embedding (transformers' bias-free
``Conv3d`` whose kernel covers the whole patch) -> blocks of RMSNorm, 2-D
rotary attention and a SiLU-gated MLP, attending within windows except at
``fullatt_block_indexes`` where each frame attends to itself whole -> the 2x2
``PatchMerger``.

One call packs several items into a bucket of ``P`` rows and takes their layout
(``vision_layout.windowed_vision_layout``, computed on the host): shapes depend on
``P`` only, so ``vision_forward`` compiles once per bucket.

Shape letters: ``P`` packed patch rows, ``merged`` merge units (``P / merge**2``),
``patch_dim`` pixels of a patch (``C * temporal_patch_size * patch_size**2``),
``E`` tower width, ``F`` MLP width, ``D`` output (decoder) width, ``H`` head dimension.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from flax import nnx

from mmjax.models.common.layers import ACTIVATIONS, RMSNorm, check_activation
from mmjax.models.common.linear import Linear
from mmjax.models.common.patch_embed import PatchEmbed
from mmjax.models.common.segment_attention import Segments
from mmjax.models.common.vision_attention import VisionAttention, rotary_cos_sin, rotary_inv_freq
from mmjax.models.qwen2_5_vl.vision_layout import WindowedVisionLayout
from mmjax.types import Array, Float

_NORM_EPS = 1e-6  # transformers hard-codes the vision norms' epsilon


@dataclasses.dataclass(frozen=True, kw_only=True)
class Qwen2_5_VisionConfig:
    """The fields of transformers' ``Qwen2_5_VLVisionConfig`` that the forward uses."""

    hidden_size: int
    intermediate_size: int
    depth: int
    num_heads: int
    out_hidden_size: int
    fullatt_block_indexes: tuple[int, ...]
    window_size: int = 112
    patch_size: int = 14
    temporal_patch_size: int = 2
    spatial_merge_size: int = 2
    in_channels: int = 3
    hidden_act: str = "silu"
    rope_theta: float = 10000.0

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def patch_dim(self) -> int:
        return self.in_channels * self.temporal_patch_size * self.patch_size**2

    @classmethod
    def from_hf(cls, hf) -> "Qwen2_5_VisionConfig":
        """Build from a transformers ``Qwen2_5_VLVisionConfig``; refuse what we cannot run."""
        rope = getattr(hf, "rope_parameters", None) or {}
        if rope.get("rope_type", "axial") != "axial":
            raise NotImplementedError(
                f"vision_config.rope_parameters.rope_type={rope['rope_type']!r} is not supported; expected 'axial'"
            )
        for i in hf.fullatt_block_indexes:
            if not 0 <= i < hf.depth:
                raise ValueError(f"vision_config.fullatt_block_indexes holds {i}, outside the {hf.depth} blocks")
        return cls(
            hidden_size=hf.hidden_size,
            intermediate_size=hf.intermediate_size,
            depth=hf.depth,
            num_heads=hf.num_heads,
            out_hidden_size=hf.out_hidden_size,
            fullatt_block_indexes=tuple(hf.fullatt_block_indexes),
            window_size=hf.window_size,
            patch_size=hf.patch_size,
            temporal_patch_size=hf.temporal_patch_size,
            spatial_merge_size=hf.spatial_merge_size,
            in_channels=hf.in_channels,
            hidden_act=check_activation(hf.hidden_act, "vision_config.hidden_act"),
            rope_theta=float(rope.get("rope_theta", 10000.0)),
        )


class GatedMLP(nnx.Module):
    """``down(act(gate(x)) * up(x))``, with biases."""

    def __init__(self, cfg: Qwen2_5_VisionConfig, *, param_dtype: jnp.dtype, rngs: nnx.Rngs):
        lin = functools.partial(Linear, param_dtype=param_dtype, rngs=rngs)
        self.gate_proj = lin(cfg.hidden_size, cfg.intermediate_size)
        self.up_proj = lin(cfg.hidden_size, cfg.intermediate_size)
        self.down_proj = lin(cfg.intermediate_size, cfg.hidden_size)
        self.act = ACTIVATIONS[cfg.hidden_act]

    def __call__(self, x: Float[Array, "P E"]) -> Float[Array, "P E"]:
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


class VisionBlock(nnx.Module):
    def __init__(self, cfg: Qwen2_5_VisionConfig, *, param_dtype: jnp.dtype, rngs: nnx.Rngs):
        norm = lambda: RMSNorm(cfg.hidden_size, eps=_NORM_EPS, param_dtype=param_dtype, rngs=rngs)  # noqa: E731
        self.norm1, self.norm2 = norm(), norm()
        self.attn = VisionAttention(cfg.hidden_size, cfg.num_heads, param_dtype=param_dtype, rngs=rngs)
        self.mlp = GatedMLP(cfg, param_dtype=param_dtype, rngs=rngs)

    def __call__(
        self, x: Float[Array, "P E"], cos: Float[Array, "P H"], sin: Float[Array, "P H"], segments: Segments
    ) -> Float[Array, "P E"]:
        x = x + self.attn(self.norm1(x), cos, sin, segments)
        return x + self.mlp(self.norm2(x))


class PatchMerger(nnx.Module):
    """RMSNorm each patch, concatenate each merge unit's patches, then ``fc2(gelu(fc1(.)))`` to the decoder width."""

    def __init__(self, cfg: Qwen2_5_VisionConfig, *, param_dtype: jnp.dtype, rngs: nnx.Rngs):
        wide = cfg.hidden_size * cfg.spatial_merge_size**2
        self.ln_q = RMSNorm(cfg.hidden_size, eps=_NORM_EPS, param_dtype=param_dtype, rngs=rngs)
        self.fc1 = Linear(wide, wide, param_dtype=param_dtype, rngs=rngs)
        self.fc2 = Linear(wide, cfg.out_hidden_size, param_dtype=param_dtype, rngs=rngs)

    def __call__(self, x: Float[Array, "P E"]) -> Float[Array, "merged D"]:
        x = self.ln_q(x).reshape(-1, self.fc1.in_features)
        return self.fc2(ACTIVATIONS["gelu"](self.fc1(x)))  # torch's nn.GELU(): exact erf


class Qwen2_5_VisionTransformer(nnx.Module):
    """``(patches, layout) -> merged embeddings``: the Qwen2.5-VL tower over one bucket of packed items."""

    def __init__(self, cfg: Qwen2_5_VisionConfig, *, param_dtype: jnp.dtype = jnp.float32, rngs: nnx.Rngs):
        self.config = cfg
        self.patch_embed = PatchEmbed(cfg.in_channels, cfg.temporal_patch_size, cfg.patch_size, cfg.hidden_size,
                                      use_bias=False, param_dtype=param_dtype, rngs=rngs)
        self.blocks = nnx.List([VisionBlock(cfg, param_dtype=param_dtype, rngs=rngs) for _ in range(cfg.depth)])
        self.merger = PatchMerger(cfg, param_dtype=param_dtype, rngs=rngs)

    def __call__(self, patches: Float[Array, "P patch_dim"], layout: WindowedVisionLayout) -> Float[Array, "merged D"]:
        """The merged embeddings of the packed items, in the processor's order.

        Args:
          patches: the processor's ``pixel_values`` of the items, concatenated, then zero rows up to the bucket.
          layout: ``windowed_vision_layout`` of the items' grids for this bucket.

        Returns:
          One row per merge unit, each item's rows in placeholder order, items in
          packing order; rows past the items' are zeros.
        """
        cfg = self.config
        unit = cfg.spatial_merge_size**2
        x = self.patch_embed(patches)
        # Into window order, one merge unit at a time; padding rows are zeroed so that no input there
        # (not even a NaN) can reach a real row.
        x = x.reshape(-1, unit, x.shape[-1])[layout.window_index].reshape(x.shape)
        x = jnp.where(layout.valid[:, None], x, 0)
        cos, sin = rotary_cos_sin(layout.rotary_ids, rotary_inv_freq(cfg.head_dim, cfg.rope_theta))
        full = Segments(layout.frame_segments, layout.valid)
        # Windows are runs of rows in window order, each at most a full window of patches: the banded attention.
        window_rows = (cfg.window_size // cfg.spatial_merge_size // cfg.patch_size * cfg.spatial_merge_size) ** 2
        windowed = Segments(layout.window_segments, layout.valid, max_run=window_rows)
        for i, block in enumerate(self.blocks):
            x = block(x, cos, sin, full if i in cfg.fullatt_block_indexes else windowed)
        merged = jnp.where(layout.valid[::unit, None], self.merger(x), 0)
        return merged[layout.reverse_index]


@functools.partial(jax.jit, static_argnums=0)
def vision_forward(
    graphdef: nnx.GraphDef, state: nnx.State, patches: Float[Array, "P patch_dim"], layout: WindowedVisionLayout
) -> Float[Array, "merged D"]:
    """The pure, jitted tower: ``graphdef, state = nnx.split(tower)`` once, then call this (one program per ``P``)."""
    return nnx.merge(graphdef, state)(patches, layout)
