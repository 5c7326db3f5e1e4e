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
through ``LlamaForCausalLM.head_dot_general``. One library holds both handlers.
"""

from __future__ import annotations

import math
import threading
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

from mmjax.kernels_cpu.registration import register, register_in_background, runs_here
from mmjax.types import Array, Float

SOURCE = Path(__file__).with_name("skinny_matmul.cc")
TARGET = "mmjax_skinny_matmul"
SYMBOL = "MmjaxSkinnyMatmul"
TRANSPOSED_TARGET = "mmjax_transposed_skinny_matmul"
TRANSPOSED_SYMBOL = "MmjaxTransposedSkinnyMatmul"
DTYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16))
#: Row counts the kernel takes: from 2 to 32 rows it streams the weights faster than XLA's dot
#: (1.1-1.6x at 8 rows); one row XLA streams at the read bandwidth already (benchmarks/skinny_matmul.py).
MIN_ROWS, MAX_ROWS = 2, 32


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


def _check(x: Array, w: Array, transposed: bool = False) -> None:
    name, w_shape = ("transposed_skinny_matmul_cpu", "[N, K]") if transposed else ("skinny_matmul_cpu", "[K, N]")
    if x.ndim != 2 or w.ndim != 2 or x.shape[1] != w.shape[1 if transposed else 0]:
        raise ValueError(f"{name}: expected x [M, K] and w {w_shape}, got {x.shape} and {w.shape}")
    if x.dtype != w.dtype:
        raise ValueError(f"{name}: x and w must have one dtype, got {x.dtype} and {w.dtype}")
    reason = (transposed_matmul_unavailable if transposed else matmul_unavailable)(x.dtype)
    if reason is not None:
        raise ValueError(f"the CPU matmul kernel cannot run: {reason}")


@jax.custom_vjp
def skinny_matmul_cpu(x: Float[Array, "M K"], w: Float[Array, "K N"]) -> Float[Array, "M N"]:
    """``x @ w`` on the kernel, accumulated in float32, in the inputs' dtype (float32 or bfloat16).

    Raises a ValueError for other shapes or dtypes, or where the kernel cannot run (``matmul_unavailable``).
    """
    _check(x, w)
    return jax.ffi.ffi_call(TARGET, jax.ShapeDtypeStruct((x.shape[0], w.shape[1]), x.dtype))(x, w)


def _forward(x: Array, w: Array) -> tuple[Array, tuple[Array, Array]]:
    return skinny_matmul_cpu(x, w), (x, w)


def _backward(saved: tuple[Array, Array], grad: Array) -> tuple[Array, Array]:
    x, w = saved
    return (grad @ w.T).astype(x.dtype), (x.T @ grad).astype(w.dtype)


skinny_matmul_cpu.defvjp(_forward, _backward)


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


def few_rows_dot_general(lhs: Array, rhs: Array, dimension_numbers: Any, precision: Any = None,
                         preferred_element_type: Any = None, **kwargs: Any) -> Array:
    """``jax.lax.dot_general``, except that ``lhs [..., K] . rhs [K, N]`` of ``MIN_ROWS`` to ``MAX_ROWS`` rows
    in all (contracting ``lhs``'s last axis with ``rhs``'s first, one dtype, no batch axes, default precision)
    runs on the kernel where it can (``matmul_unavailable``), and so does ``lhs [..., K] . rhs [N, K]``
    (``rhs``'s last axis contracted: a tied LM head) on ``transposed_skinny_matmul_cpu``."""
    (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = dimension_numbers
    rows = math.prod(lhs.shape[:-1])
    transposed = tuple(rhs_contract) == (1,)
    few_rows = (
        rhs.ndim == 2 and lhs.ndim >= 1 and tuple(lhs_contract) == (lhs.ndim - 1,)
        and tuple(rhs_contract) in ((0,), (1,))
        and not lhs_batch and not rhs_batch and MIN_ROWS <= rows <= MAX_ROWS and lhs.dtype == rhs.dtype
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
