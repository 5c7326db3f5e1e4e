"""Small layers shared by the models: activations by Hugging Face name, RMSNorm.

The activation names are the keys of transformers' ``ACT2FN`` that the
supported checkpoints use; an unknown name is refused (see ``activation``)
rather than replaced by a near miss.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mmjax.batch_invariant import batch_invariant, elementwise, fixed_order_sum, separately
from mmjax.types import Array, Float


def _quick_gelu(x: jax.Array) -> jax.Array:
    # CLIP's sigmoid approximation of GELU (transformers' QuickGELUActivation).
    if batch_invariant():
        return (x * elementwise("logistic", 1.702 * x)).astype(x.dtype)
    return x * jax.nn.sigmoid(1.702 * x)


def _silu(x: jax.Array) -> jax.Array:
    if batch_invariant():  # float32, its logistic the same bits for every element (mmjax.batch_invariant)
        x32 = x.astype(jnp.float32)
        return (x32 * elementwise("logistic", x32)).astype(x.dtype)
    return jax.nn.silu(x)


def _gelu_tanh(x: jax.Array) -> jax.Array:
    if batch_invariant():  # jax.nn.gelu(approximate=True)'s formula, each step rounded as written
        x32 = x.astype(jnp.float32)
        cubed, = separately(0.044715 * (x32 * x32 * x32))
        inner = np.float32(np.sqrt(2 / np.pi)) * (x32 + cubed)
        return (0.5 * x32 * (1.0 + elementwise("tanh", inner))).astype(x.dtype)
    return jax.nn.gelu(x, approximate=True)


#: transformers' activation name -> the same function in JAX.
ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),  # torch's exact erf GELU
    "gelu_new": _gelu_tanh,
    "gelu_pytorch_tanh": _gelu_tanh,
    "quick_gelu": _quick_gelu,
    "silu": _silu,
    "swish": _silu,
    "relu": jax.nn.relu,
}


def check_activation(name: str, field: str) -> str:
    """Return ``name`` if supported, else raise naming the config ``field``."""
    if name not in ACTIVATIONS:
        raise NotImplementedError(
            f"config field {field}={name!r} is not supported; supported: {sorted(ACTIVATIONS)}"
        )
    return name


class RMSNorm(nnx.Module):
    """Llama's RMSNorm: normalise in float32, cast back, then scale.

    The cast happens *before* the scale multiply, as in transformers'
    ``LlamaRMSNorm``, so bfloat16 models round at the same place.
    """

    def __init__(self, dim: int, *, eps: float, param_dtype: jnp.dtype, rngs: nnx.Rngs):
        del rngs  # deterministic init (ones), kept for a uniform constructor
        self.eps = eps
        self.weight = nnx.Param(jnp.ones((dim,), dtype=param_dtype))

    def __call__(self, x: Float[Array, "*B D"]) -> Float[Array, "*B D"]:
        x32 = x.astype(jnp.float32)
        normed = x32 * inverse_root(mean_square(x32) + self.eps)
        out = self.weight[...] * normed.astype(x.dtype)
        return separately(out)[0] if batch_invariant() else out  # a product a sum may take: rounded first


def mean_square(x32: Float[Array, "*B D"]) -> Float[Array, "*B 1"]:
    """The mean of the squares over the last axis (float32; kept), in one fixed order inside
    ``batch_invariant_numerics()`` (``mmjax.batch_invariant.fixed_order_sum``)."""
    if batch_invariant():
        mean, = separately(fixed_order_sum(x32 * x32)[..., None] / x32.shape[-1])  # not an FMA with the + eps
        return mean
    return jnp.mean(x32 * x32, axis=-1, keepdims=True)


def inverse_root(x32: Float[Array, "*S"]) -> Float[Array, "*S"]:
    """``rsqrt`` (``elementwise``'s inside ``batch_invariant_numerics()``)."""
    return elementwise("rsqrt", x32) if batch_invariant() else jax.lax.rsqrt(x32)
