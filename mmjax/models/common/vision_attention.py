"""Attention of the Qwen vision towers (Qwen2.5-VL and Qwen3-VL): 2-D rotary, segment-masked dense attention.

transformers runs attention once per segment (a frame, or a window) of
``cu_seqlens``. Here every row attends every row of its own segment through a
dense ``[P, P]`` mask built from segment ids, so shapes never depend on the
grids; padding rows (``valid`` false) see nothing and are seen by nothing.

Shape letters: ``P`` packed patch rows (query and key rows alike), ``E`` tower width,
``N`` heads, ``H`` head dimension. In einsum strings ``q`` and ``k`` are the query and key rows.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from flax import nnx

from mmjax.types import Array, ArrayLike, Bool, Float, Int, shape_checked


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


@shape_checked
def segment_mask(segments: Int[ArrayLike, "P"], valid: Bool[ArrayLike, "P"]) -> Bool[Array, "P P"]:
    """``mask[q, k]``: row ``q`` attends row ``k`` (same segment, both real)."""
    segments, valid = jnp.asarray(segments), jnp.asarray(valid)
    return (segments[:, None] == segments[None, :]) & valid[:, None] & valid[None, :]


@shape_checked
def segment_attention(
    q: Float[Array, "P N H"], k: Float[Array, "P N H"], v: Float[Array, "P N H"], mask: Bool[Array, "P P"]
) -> Float[Array, "P N H"]:
    """Bidirectional attention within segments; a row that sees nothing gets zeros (not NaN)."""
    scores = jnp.einsum("qNH,kNH->Nqk", q, k, preferred_element_type=jnp.float32) * q.shape[-1] ** -0.5
    scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
    weights = jnp.where(mask, jnp.exp(scores - jnp.max(scores, axis=-1, keepdims=True)), 0.0)
    # A padding row's weights are all zero: dividing by ``tiny`` keeps its output 0.
    probs = weights / jnp.maximum(jnp.sum(weights, axis=-1, keepdims=True), jnp.finfo(jnp.float32).tiny)
    return jnp.einsum("Nqk,kNH->qNH", probs.astype(v.dtype), v)


class VisionAttention(nnx.Module):
    """``qkv`` (one fused projection) -> 2-D rotary on q, k -> segment attention -> ``proj``."""

    def __init__(self, dim: int, num_heads: int, *, param_dtype: jnp.dtype, rngs: nnx.Rngs):
        if dim % num_heads:
            raise ValueError(f"vision hidden_size {dim} is not a multiple of num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = nnx.Linear(dim, 3 * dim, param_dtype=param_dtype, rngs=rngs)
        self.proj = nnx.Linear(dim, dim, param_dtype=param_dtype, rngs=rngs)

    def __call__(
        self, x: Float[Array, "P E"], cos: Float[Array, "P H"], sin: Float[Array, "P H"], mask: Bool[Array, "P P"]
    ) -> Float[Array, "P E"]:
        qkv = self.qkv(x).reshape(x.shape[0], 3, self.num_heads, -1)  # transformers' (3, heads, head_dim) split
        q, k, v = qkv[:, 0], qkv[:, 1], qkv[:, 2]
        out = segment_attention(_rotate(q, cos, sin), _rotate(k, cos, sin), v, mask)
        return self.proj(out.reshape(x.shape))
