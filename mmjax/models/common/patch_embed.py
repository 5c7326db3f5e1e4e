"""The patch embedding of the Qwen-VL towers: transformers' ``Conv3d`` over flattened patches, as one matmul."""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from mmjax.types import Array, Float


class PatchEmbed(nnx.Module):
    """transformers' ``Conv3d`` patch embedding, as the one matmul it is (its kernel covers the whole patch).

    The kernel is kept in ``nnx.Conv``'s layout (``[t, Y, X, C, E]``) so that it
    loads like any convolution; the processor flattens a patch as ``(C, t, Y, X)``.
    """

    def __init__(self, in_channels: int, temporal: int, patch: int, dim: int, *, use_bias: bool,
                 param_dtype: jnp.dtype, rngs: nnx.Rngs):
        size = (temporal, patch, patch)
        self.proj = nnx.Conv(in_channels, dim, kernel_size=size, strides=size, padding="VALID", use_bias=use_bias,
                             param_dtype=param_dtype, rngs=rngs)

    def __call__(self, patches: Float[Array, "P patch_dim"]) -> Float[Array, "P E"]:
        kernel = self.proj.kernel[...]
        flat = kernel.transpose(3, 0, 1, 2, 4).reshape(-1, kernel.shape[-1])  # rows in (C, t, Y, X) order
        out = patches.astype(kernel.dtype) @ flat
        return out if self.proj.bias is None else out + self.proj.bias[...]
