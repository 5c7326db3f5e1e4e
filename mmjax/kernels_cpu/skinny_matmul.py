"""Products of a few rows, ``x [M, K] @ w [K, N]`` and ``x [M, K] @ w [N, K].T``, on a native CPU kernel
(C++ in the .cc beside this file).

A decode step multiplies one row per sequence by every weight of the decoder:
its speed is how fast the weights stream from memory. XLA's CPU dot streams
them at about half the read bandwidth from 8 rows up; the kernel keeps 8 rows'
accumulators in L1 while the weights stream through. Measured on the 2-core
benchmark host (``benchmarks/skinny_matmul.py`` prints the current figures).

``few_rows_dot_general`` is ``jax.lax.dot_general`` with that one case sent
to the kernel, for ``nnx.Linear(dot_general=...)``; ``mmjax.engine`` puts it
in the decoder's linear layers of a step program on CPU (one device), where
prefill's many-row products still go to XLA. Gradients flow through plain
XLA products, so a step stays differentiable.

``transposed_skinny_matmul_cpu`` takes ``w`` stored as ``[N, K]`` (a tied LM
head: ``hidden @ E.T``, E the ``[V, D]`` embedding), which XLA's CPU dot streams
at a fraction of the read bandwidth; ``few_rows_dot_general`` sends a
contraction of ``rhs``'s last axis there, and the decoder's tied head calls it
through ``LlamaForCausalLM.head_dot_general``.

``skinny_matmul_int8_cpu`` multiplies by int8 weights with one float32 scale
per output column (symmetric per-channel quantization), ``(x @ w) * scale``,
streaming a quarter of float32's bytes; XLA would convert the whole weight to
float every call. One library holds the three handlers.
"""

from __future__ import annotations

import functools
import math
import threading
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mmjax.kernels_cpu.registration import register, register_in_background, runs_here
from mmjax.types import Array, Float, Int

SOURCE = Path(__file__).with_name("skinny_matmul.cc")
TARGET = "mmjax_skinny_matmul"
SYMBOL = "MmjaxSkinnyMatmul"
TRANSPOSED_TARGET = "mmjax_transposed_skinny_matmul"
TRANSPOSED_SYMBOL = "MmjaxTransposedSkinnyMatmul"
INT8_TARGET = "mmjax_int8_skinny_matmul"
INT8_SYMBOL = "MmjaxSkinnyMatmulInt8"
DTYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16))
#: The most rows ``few_rows_dot_general`` sends to the kernels. At 8 rows the kernel is 1.2-1.5x XLA's dot in
#: float32 and 8-12x in bfloat16, at 32 bfloat16 rows 3-4x; at 32 float32 rows XLA's blocked dot catches up
#: (0.6-1.0x on [512, 4096] to [2560, 10240]; benchmarks/skinny_matmul.py).
MAX_ROWS = 32
#: The fewest: one row, in both dtypes (figures at ``min_rows``).
_MIN_ROWS = {jnp.dtype(jnp.float32): 1, jnp.dtype(jnp.bfloat16): 1}


def build_in_background() -> threading.Thread | None:
    """Starts building the kernel on a thread (``mmjax.load`` does, before reading the weights)."""
    return register_in_background(TARGET, SOURCE, SYMBOL)


def matmul_unavailable(dtype: Any) -> str | None:
    """None if the kernel serves `dtype` here (building it now if needed), else why not."""
    reason = runs_here()
    if reason is not None:
        return reason
    if jnp.dtype(dtype) not in DTYPES:
        return f"dtype {jnp.dtype(dtype)} (the kernel takes float32 or bfloat16)"
    return register(TARGET, SOURCE, SYMBOL)


def transposed_matmul_unavailable(dtype: Any) -> str | None:
    """``matmul_unavailable`` for ``transposed_skinny_matmul_cpu``. The library is built (or a build under
    way awaited) for the first handler, so the second only registers the library already on disk."""
    reason = matmul_unavailable(dtype)
    return reason if reason is not None else register(TRANSPOSED_TARGET, SOURCE, TRANSPOSED_SYMBOL)


def int8_matmul_unavailable(dtype: Any) -> str | None:
    """``matmul_unavailable`` for ``skinny_matmul_int8_cpu`` with x (and y) of `dtype`: its handler is
    registered from the library built for the first."""
    reason = matmul_unavailable(dtype)
    return reason if reason is not None else register(INT8_TARGET, SOURCE, INT8_SYMBOL)


def min_rows(dtype: Any) -> int:
    """The fewest rows ``few_rows_dot_general`` multiplies on the kernel for `dtype`: one, for float32 and
    bfloat16. XLA's dot of one bfloat16 row streams at 1.0-1.4 GB/s against the kernel's 14-20 ([512, 1536] to
    [2560, 10240], 30 GB/s read bandwidth; benchmarks/skinny_matmul.py). One float32 row XLA streams near the
    read bandwidth by itself, and alone it can beat the kernel, but in a decode step's chain of products (weights
    from memory, each product waiting for the last) the kernel is 8-11 % faster since it reads whole rows
    (benchmarks/skinny_matmul_ab.py's chain, XLA against the kernel, three runs: 7.55/8.02/7.02 against
    6.72/7.37/6.24 ms), and a one-sequence float32 decode step with it 9.5-7.8 against 10.4-10.8 ms
    (benchmarks/step_breakdown.py --batch 1, alternated). The transposed kernel takes the same rows: for a tied
    head's row (``[1, 512] . [32064, 512]^T``) it is 0.95-1.8x XLA's dot in bfloat16, 1.03x in float32."""
    return _MIN_ROWS.get(jnp.dtype(dtype), 2)


def _check(x: Array, w: Array, transposed: bool = False) -> None:
    name, w_shape = ("transposed_skinny_matmul_cpu", "[N, K]") if transposed else ("skinny_matmul_cpu", "[K, N]")
    if x.ndim != 2 or w.ndim != 2 or x.shape[1] != w.shape[1 if transposed else 0]:
        raise ValueError(f"{name}: expected x [M, K] and w {w_shape}, got {x.shape} and {w.shape}")
    if x.dtype != w.dtype:
        raise ValueError(f"{name}: x and w must have one dtype, got {x.dtype} and {w.dtype}")
    reason = (transposed_matmul_unavailable if transposed else matmul_unavailable)(x.dtype)
    if reason is not None:
        raise ValueError(f"the CPU matmul kernel cannot run: {reason}")


def skinny_matmul_cpu(x: Float[Array, "M K"], w: Float[Array, "K N"], fixed_order: bool = False
                      ) -> Float[Array, "M N"]:
    """``x @ w`` on the kernel, accumulated in float32, in the inputs' dtype (float32 or bfloat16).

    ``fixed_order``: each ``y[m, n]`` is one chain of float32 FMAs over ``k`` in order, whatever ``M`` and
    the other rows (the kernel never splits ``w``'s rows then; mmjax's batch-invariant mode). Otherwise one
    or two rows may be summed in slices of ``w``'s rows, for speed. Gradients are XLA's products.

    Raises a ValueError for other shapes or dtypes, or where the kernel cannot run (``matmul_unavailable``).
    """
    _check(x, w)
    return _skinny_matmul(x, w, bool(fixed_order))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _skinny_matmul(x: Array, w: Array, fixed_order: bool) -> Array:
    out = jax.ShapeDtypeStruct((x.shape[0], w.shape[1]), x.dtype)
    return jax.ffi.ffi_call(TARGET, out)(x, w, fixed_order=fixed_order)


def _forward(x: Array, w: Array, fixed_order: bool) -> tuple[Array, tuple[Array, Array]]:
    return _skinny_matmul(x, w, fixed_order), (x, w)


def _backward(fixed_order: bool, saved: tuple[Array, Array], grad: Array) -> tuple[Array, Array]:
    x, w = saved
    return (grad @ w.T).astype(x.dtype), (x.T @ grad).astype(w.dtype)


_skinny_matmul.defvjp(_forward, _backward)


@jax.custom_vjp
def transposed_skinny_matmul_cpu(x: Float[Array, "M K"], w: Float[Array, "N K"]) -> Float[Array, "M N"]:
    """``x @ w.T`` on the kernel (w's rows read where they lie, no transposed copy), accumulated in float32,
    in the inputs' dtype (float32 or bfloat16).

    Raises a ValueError for other shapes or dtypes, or where the kernel cannot run
    (``transposed_matmul_unavailable``).
    """
    _check(x, w, transposed=True)
    return jax.ffi.ffi_call(TRANSPOSED_TARGET, jax.ShapeDtypeStruct((x.shape[0], w.shape[0]), x.dtype))(x, w)


def _transposed_forward(x: Array, w: Array) -> tuple[Array, tuple[Array, Array]]:
    return transposed_skinny_matmul_cpu(x, w), (x, w)


def _transposed_backward(saved: tuple[Array, Array], grad: Array) -> tuple[Array, Array]:
    x, w = saved
    return (grad @ w).astype(x.dtype), (grad.T @ x).astype(w.dtype)


transposed_skinny_matmul_cpu.defvjp(_transposed_forward, _transposed_backward)


def _check_int8(x: Array, w: Array, scale: Array) -> None:
    name = "skinny_matmul_int8_cpu"
    if x.ndim != 2 or w.ndim != 2 or scale.ndim != 1 or x.shape[1] != w.shape[0] or scale.shape[0] != w.shape[1]:
        raise ValueError(f"{name}: expected x [M, K], w [K, N] and scale [N], got {x.shape}, {w.shape} and "
                         f"{scale.shape}")
    if x.dtype not in DTYPES or w.dtype != jnp.int8 or scale.dtype != jnp.float32:
        raise ValueError(f"{name}: expected x float32 or bfloat16, w int8 and scale float32, got {x.dtype}, "
                         f"{w.dtype} and {scale.dtype}")
    reason = int8_matmul_unavailable(x.dtype)
    if reason is not None:
        raise ValueError(f"the CPU matmul kernel cannot run: {reason}")


def skinny_matmul_int8_cpu(x: Float[Array, "M K"], w: Int[Array, "K N"], scale: Float[Array, "N"],
                           fixed_order: bool = False) -> Float[Array, "M N"]:
    """``(x @ w) * scale`` for int8 weights with one float32 scale per output column, accumulated in float32,
    in x's dtype (float32 or bfloat16). ``fixed_order``: as ``skinny_matmul_cpu``'s.

    Differentiable with respect to x only: the cotangents of w and scale are zeros (quantized weights are
    constants; train their float originals). Raises a ValueError for other shapes or dtypes, or where the
    kernel cannot run (``int8_matmul_unavailable``).
    """
    _check_int8(x, w, scale)
    return _skinny_matmul_int8(x, w, scale, bool(fixed_order))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _skinny_matmul_int8(x: Array, w: Array, scale: Array, fixed_order: bool) -> Array:
    out = jax.ShapeDtypeStruct((x.shape[0], w.shape[1]), x.dtype)
    return jax.ffi.ffi_call(INT8_TARGET, out)(x, w, scale, fixed_order=fixed_order)


def _int8_forward(x: Array, w: Array, scale: Array, fixed_order: bool) -> tuple[Array, tuple[Array, Array, Array]]:
    return _skinny_matmul_int8(x, w, scale, fixed_order), (x, w, scale)


def _int8_backward(fixed_order: bool, saved: tuple[Array, Array, Array], grad: Array
                   ) -> tuple[Array, np.ndarray, Array]:
    x, w, scale = saved
    dx = (grad.astype(jnp.float32) * scale) @ w.astype(jnp.float32).T
    return dx.astype(x.dtype), np.zeros(w.shape, jax.dtypes.float0), jnp.zeros_like(scale)


_skinny_matmul_int8.defvjp(_int8_forward, _int8_backward)


def few_rows_dot_general(lhs: Array, rhs: Array, dimension_numbers: Any, precision: Any = None,
                         preferred_element_type: Any = None, **kwargs: Any) -> Array:
    """``jax.lax.dot_general``, except that ``lhs [..., K] . rhs [K, N]`` of ``min_rows`` to ``MAX_ROWS`` rows
    in all (contracting ``lhs``'s last axis with ``rhs``'s first, one dtype, no batch axes, default precision)
    runs on the kernel where it can (``matmul_unavailable``), and so does ``lhs [..., K] . rhs [N, K]``
    (``rhs``'s last axis contracted: a tied LM head) on ``transposed_skinny_matmul_cpu``."""
    (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = dimension_numbers
    rows = math.prod(lhs.shape[:-1])
    transposed = tuple(rhs_contract) == (1,)
    few_rows = (
        rhs.ndim == 2 and lhs.ndim >= 1 and tuple(lhs_contract) == (lhs.ndim - 1,)
        and tuple(rhs_contract) in ((0,), (1,))
        and not lhs_batch and not rhs_batch and min_rows(lhs.dtype) <= rows <= MAX_ROWS and lhs.dtype == rhs.dtype
        and precision is None and preferred_element_type in (None, lhs.dtype)
        and not kwargs.get("out_sharding")
        and (transposed_matmul_unavailable if transposed else matmul_unavailable)(lhs.dtype) is None
    )
    if not few_rows:
        return jax.lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                                   preferred_element_type=preferred_element_type, **kwargs)
    kernel = transposed_skinny_matmul_cpu if transposed else skinny_matmul_cpu
    out = kernel(lhs.reshape(rows, lhs.shape[-1]), rhs)
    return out.reshape(*lhs.shape[:-1], rhs.shape[0 if transposed else 1])
