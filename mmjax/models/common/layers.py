"""Small layers shared by the models: activations by Hugging Face name, RMSNorm.

The activation names are the keys of transformers' ``ACT2FN`` that the
supported checkpoints use; an unknown name is refused (see ``activation``)
rather than replaced by a near miss.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from mmjax.types import Array, Float


def _quick_gelu(x: jax.Array) -> jax.Array:
    # CLIP's sigmoid approximation of GELU (transformers' QuickGELUActivation).
    return x * jax.nn.sigmoid(1.702 * x)


#: transformers' activation name -> the same function in JAX.
ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),  # torch's exact erf GELU
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "quick_gelu": _quick_gelu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
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
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return self.weight[...] * normed.astype(x.dtype)
