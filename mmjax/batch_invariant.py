"""Batch-invariant numerics: a switch that holds while a program is traced.

Inside ``batch_invariant_numerics()``, every computation whose result for one token could depend on
what else is in its batch is done in one fixed order instead:

- a projection's product (``mmjax.models.common.linear.project``, the tied LM head) sums each output
  element over the contracted axis in one fixed order whatever the number of rows: on CPU the native
  kernels with ``fixed_order`` (one chain of float32 FMAs over ``k``); elsewhere XLA's dot on tiles of a
  fixed number of rows, in a loop (``TILE_ROWS``), so every row goes through a product of one shape;
- attention (the decoder's, dense or paged) walks each query's keys in blocks of ``KEY_BLOCK`` positions
  aligned at position 0, one online-softmax update per block in a fixed order, skipping the blocks it
  does not see (``mmjax.attention.key_blocks``): its result does not depend on the other queries of its
  step, on how its prompt was chunked, or on the page size.

The reductions within one token's row (norms, the log-softmax) sum in one order too
(``fixed_order_sum``); where a product meets a sum the product is rounded first (``separately``:
XLA:CPU would contract them into one FMA in some programs and not in others); and the transcendental
functions (exp, log, rsqrt, cos, sin, the logistic, tanh) give an element the same bits whatever the
array around it (``elementwise``). The vision towers run each request's items alone in both paths, with
the same shapes, and keep their own XLA numerics otherwise. ``mmjax.score`` traces its forward pass
inside the switch, and so does an engine built with ``EngineConfig(batch_invariant=True)``; the
engine's programs then give the same bits as ``score`` for the same tokens.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp

from mmjax.kernels_cpu.fixed_math import fixed_math_unavailable, fixed_unary
from mmjax.kernels_cpu.skinny_matmul import (
    matmul_unavailable, skinny_matmul_cpu, transposed_matmul_unavailable)
from mmjax.types import Array, Float

#: Rows of one product on the portable (XLA) path.
TILE_ROWS = 16
#: Key positions per block of the key-block attention; block ``j`` holds positions ``[16 j, 16 j + 16)``.
KEY_BLOCK = 16

_ON: contextvars.ContextVar[bool] = contextvars.ContextVar("mmjax_batch_invariant", default=False)


@contextlib.contextmanager
def batch_invariant_numerics() -> Iterator[None]:
    """Within this block (while tracing), products and attention run in their batch-invariant order."""
    token = _ON.set(True)
    try:
        yield
    finally:
        _ON.reset(token)


def batch_invariant() -> bool:
    """Whether the code being traced now is inside ``batch_invariant_numerics()``."""
    return _ON.get()


def fixed_order_sum(x: Float[Array, "*B D"]) -> Float[Array, "*B"]:
    """float32 sum over the last axis in one order, ``k = 0, 1, ..., D - 1``, whatever the leading shape and
    whatever program it is traced in (XLA's own reductions are emitted, and fused, differently for different
    shapes: an RMSNorm's sum of 32 squares came out differently for 64 and 256 rows). On CPU the fixed-order
    product kernel against a column of ones; elsewhere XLA's dot on tiles of ``TILE_ROWS`` rows. Differentiable."""
    rows = x.astype(jnp.float32).reshape(-1, x.shape[-1])
    ones = jnp.ones((x.shape[-1], 1), jnp.float32)
    if cpu_kernel_serves(jnp.float32):
        sums = skinny_matmul_cpu(rows, ones, fixed_order=True)
    else:
        sums = in_row_tiles(rows, lambda t: jax.lax.dot(t, ones, preferred_element_type=jnp.float32))
    return sums.reshape(x.shape[:-1])


def fixed_order_log_softmax(logits: Float[Array, "*B V"]) -> Float[Array, "*B V"]:
    """``jax.nn.log_softmax`` over the last axis in float32, its sum by ``fixed_order_sum``, its exp and log
    by ``elementwise``."""
    logits = logits.astype(jnp.float32)
    shifted = logits - jax.lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True))
    return shifted - elementwise("log", fixed_order_sum(elementwise("exp", shifted)))[..., None]


def elementwise(name: str, x: Float[Array, "*S"]) -> Float[Array, "*S"]:
    """``name`` ("exp", "log", "rsqrt", "cos", "sin", "logistic" or "tanh") of each element, in float32, the
    same bits for an element whatever the shape around it: on CPU one C-library call per element
    (``mmjax.kernels_cpu.fixed_math``: XLA:CPU's own code differs with the array's size); elsewhere XLA's op,
    which GPUs and TPUs compute element by element with one instruction sequence."""
    if jax.default_backend() == "cpu" and fixed_math_unavailable() is None:
        return fixed_unary(name, x)
    x = x.astype(jnp.float32)
    return {"exp": jnp.exp, "log": jnp.log, "rsqrt": jax.lax.rsqrt, "cos": jnp.cos, "sin": jnp.sin,
            "logistic": jax.nn.sigmoid, "tanh": jnp.tanh}[name](x)


def separately(*values: Array) -> tuple[Array, ...]:
    """``values``, each computed and rounded in full before anything uses it: XLA:CPU contracts a product and
    a sum of one fusion into one FMA, rounded once, and fuses differently in different programs. On CPU each
    goes through the kernel's unfused copy (an optimization barrier is expanded before fusion there and does not
    stop it); elsewhere an optimization barrier."""
    if jax.default_backend() == "cpu" and fixed_math_unavailable() is None:
        return tuple(fixed_unary("copy", v).astype(v.dtype) for v in values)
    return jax.lax.optimization_barrier(values)


def cpu_kernel_serves(dtype: Any, transposed: bool = False) -> bool:
    """Whether the native fixed-order product kernel runs here for ``dtype``."""
    if jax.default_backend() != "cpu":
        return False
    return (transposed_matmul_unavailable if transposed else matmul_unavailable)(dtype) is None


def in_row_tiles(rows: Float[Array, "M K"], product: Callable[[Array], Array]) -> Array:
    """``product`` of ``TILE_ROWS`` rows at a time, in a loop (``lax.map``): every row through one shape."""
    count = rows.shape[0]
    tiles = -(-count // TILE_ROWS)
    padded = jnp.pad(rows, ((0, tiles * TILE_ROWS - count), (0, 0))).reshape(tiles, TILE_ROWS, rows.shape[1])
    out = jax.lax.map(product, padded)
    return out.reshape(tiles * TILE_ROWS, *out.shape[2:])[:count]
