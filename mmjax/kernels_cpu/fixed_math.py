"""Elementwise float32 functions, one C-library call per element (C++ in the .cc beside this file).

XLA:CPU emits a transcendental function with different code for different array sizes: ``exp`` of 3 or
7 floats differed, in the last bit, from the same floats' ``exp`` inside a larger array. mmjax's
batch-invariant mode (``mmjax.batch_invariant``) needs a token's value not to depend on how many tokens
share its step, so on CPU it computes these functions here: every element the same scalar call.
"copy" is the identity as a call XLA never fuses: its input is computed, and rounded, before it (XLA:CPU
contracts a product and a sum in one fusion into one FMA; an optimization barrier is expanded before fusion
on CPU and does not stop it). Gradients are XLA's (the derivative from the output, or the input).
"""

from __future__ import annotations

import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from mmjax.kernels_cpu.registration import register, runs_here
from mmjax.types import Array, Float

SOURCE = Path(__file__).with_name("fixed_math.cc")
TARGET, SYMBOL = "mmjax_fixed_unary", "MmjaxFixedUnary"
#: The functions the kernel computes, by name, and its ``op`` code of each.
FUNCTIONS = {"exp": 0, "log": 1, "rsqrt": 2, "cos": 3, "sin": 4, "logistic": 5, "tanh": 6, "copy": 7}


def fixed_math_unavailable() -> str | None:
    """None if the kernel runs here (building it now if needed), else why not."""
    reason = runs_here()
    return reason if reason is not None else register(TARGET, SOURCE, SYMBOL)


def fixed_unary(name: str, x: Float[Array, "*S"]) -> Float[Array, "*S"]:
    """``name`` (a key of ``FUNCTIONS``) of every element of ``x``, in float32, on the kernel. Call only where
    ``fixed_math_unavailable()`` is None."""
    if name not in FUNCTIONS:
        raise ValueError(f"fixed_unary: name must be one of {sorted(FUNCTIONS)}, got {name!r}")
    return _fixed_unary(x.astype(jnp.float32), name)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _fixed_unary(x: Array, name: str) -> Array:
    call = jax.ffi.ffi_call(TARGET, jax.ShapeDtypeStruct(x.shape, jnp.float32), vmap_method="broadcast_all")
    return call(x, op=np.int32(FUNCTIONS[name]))


def _forward(x: Array, name: str) -> tuple[Array, tuple[Array, Array]]:
    y = _fixed_unary(x, name)
    return y, (x, y)


def _backward(name: str, saved: tuple[Array, Array], grad: Array) -> tuple[Array]:
    x, y = saved
    slope = {"exp": lambda: y, "log": lambda: 1.0 / x, "rsqrt": lambda: -0.5 * y * y * y,
             "cos": lambda: -jnp.sin(x), "sin": lambda: jnp.cos(x), "logistic": lambda: y * (1.0 - y),
             "tanh": lambda: 1.0 - y * y, "copy": lambda: 1.0}[name]()
    return (grad * slope,)


_fixed_unary.defvjp(_forward, _backward)
