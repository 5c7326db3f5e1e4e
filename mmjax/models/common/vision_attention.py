"""Attention of the Qwen vision towers (Qwen2.5-VL and Qwen3-VL): 2-D rotary, then segment attention.

Which rows attend which (a frame, or a window: ``Segments``) and how that is
computed for a bucket of any size is ``mmjax.models.common.segment_attention``.

Shape letters: ``P`` packed patch rows, ``E`` tower width, ``N`` heads, ``H`` head dimension.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from flax import nnx

from mmjax.models.common.linear import Linear
from mmjax.models.common.segment_attention import Segments, segment_attention
from mmjax.types import Array, ArrayLike, Float, Int, shape_checked


def rotary_inv_freq(head_dim: int, theta: float) -> np.ndarray:
    """``[H / 4]`` inverse frequencies: each of the h and w axes rotates a quarter-pair of the head."""
    if head_dim % 4:
        raise ValueError(f"the vision head dimension ({head_dim}) must be a multiple of 4 for 2-D rotary")
    half = head_dim // 2
    return 1.0 / (theta ** (np.arange(0, half, 2, dtype=np.float32) / half))


@shape_checked
def rotary_cos_sin(
    ids: Int[ArrayLike, "P 2"], inv_freq: Float[ArrayLike, "quarter"]
) -> tuple[Float[Array, "P H"], Float[Array, "P H"]]:
    """cos and sin of each row's angles: ``[h angles, w angles]`` twice, as transformers lays them out."""
    freqs = ids.astype(jnp.float32)[:, :, None] * jnp.asarray(inv_freq, jnp.float32)  # P, 2, quarter
    freqs = freqs.reshape(freqs.shape[0], -1)  # h's quarter, then w's
    freqs = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(freqs), jnp.sin(freqs)


def _rotate(x: Float[Array, "P N H"], cos: Float[Array, "P H"], sin: Float[Array, "P H"]) -> Float[Array, "P N H"]:
    x32 = x.astype(jnp.float32)  # rotated in float32, as transformers does whatever the dtype
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x32[..., half:], x32[..., :half]], axis=-1)
    return (x32 * cos[:, None] + rotated * sin[:, None]).astype(x.dtype)


class VisionAttention(nnx.Module):
    """``qkv`` (one fused projection) -> 2-D rotary on q, k -> segment attention -> ``proj``."""

    def __init__(self, dim: int, num_heads: int, *, param_dtype: jnp.dtype, rngs: nnx.Rngs):
        if dim % num_heads:
            raise ValueError(f"vision hidden_size {dim} is not a multiple of num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = Linear(dim, 3 * dim, param_dtype=param_dtype, rngs=rngs)
        self.proj = Linear(dim, dim, param_dtype=param_dtype, rngs=rngs)

    def __call__(
        self, x: Float[Array, "P E"], cos: Float[Array, "P H"], sin: Float[Array, "P H"], segments: Segments
    ) -> Float[Array, "P E"]:
        qkv = self.qkv(x).reshape(x.shape[0], 3, self.num_heads, -1)  # transformers' (3, heads, head_dim) split
        q, k, v = qkv[:, 0], qkv[:, 1], qkv[:, 2]
        out = segment_attention(_rotate(q, cos, sin), _rotate(k, cos, sin), v, segments)
        return self.proj(out.reshape(x.shape))
