"""How a projection multiplies: the one linear-layer policy of mmjax's models.

A ``Linear`` keeps its kernel ``[in, out]`` either in the model's dtype or quantized
(``quantize_int8``): int8 with one float32 scale per output column, ``kernel_scale [out]``
(symmetric: ``kernel ~= q * scale``). Which layers of a model are quantized is the family's
choice (``ModelFamily.quantized_layers``, applied by ``quantize_linear_layers``); how every
product runs is decided here, in ``project`` and ``tied_head_product``:

- by default (training, dense forward passes, accelerators, and the engine's prefill), XLA: ``x @ kernel``,
  or for an int8 kernel ``(x @ q.astype(x.dtype)) * scale`` (the convert fuses into the dot on TPU and GPU,
  so the weights are read as int8), with the operand dtypes that multiply fastest on the backend
  (``_xla_product``: on a CPU with AMX, bfloat16 into a float32 result);
- inside ``few_row_products_on_cpu()`` (the engine's CPU step programs on one device), products of
  few rows, a decode step's, run on the native CPU kernels of ``mmjax.kernels_cpu``, which stream
  the weights as stored (float32, bfloat16 or int8) and accumulate in float32;
- inside ``mmjax.batch_invariant.batch_invariant_numerics()`` (``mmjax.score``, an engine with
  ``batch_invariant=True``), every product sums in one order whatever its number of rows (``invariant_product``).

The stored form is what the partition rules, the memory plan and ``save_pretrained`` read:
``kernel_scale`` is split like its layer's output axis, and saved as ``<name>.weight_scale``.
"""

from __future__ import annotations

import contextlib
import math
import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mmjax.batch_invariant import batch_invariant, cpu_kernel_serves, in_row_tiles
from mmjax.kernels_cpu import few_rows_dot_general, int8_matmul_unavailable, skinny_matmul_int8_cpu
from mmjax.kernels_cpu.cpu_features import multiplies_bfloat16_in_tiles
from mmjax.kernels_cpu.skinny_matmul import MAX_ROWS, skinny_matmul_cpu, transposed_skinny_matmul_cpu
from mmjax.models.common.trace_flag import TraceFlag
from mmjax.types import Array, Float

#: The quantized forms ``mmjax.load(..., quantization=)`` takes.
QUANTIZATIONS = ("int8",)

_FEW_ROWS_ON_CPU = TraceFlag("mmjax_few_rows_on_cpu")


def few_row_products_on_cpu() -> contextlib.AbstractContextManager[None]:
    """Within this block (while tracing), products of few rows run on the native CPU kernels.

    The engine's step programs trace their model inside it on one CPU device; everything else
    (training, ``LLM.logits``, meshes, accelerators) keeps XLA's products.
    """
    return _FEW_ROWS_ON_CPU.on()


def quantize_int8(kernel: Float[Array, "K N"]) -> tuple[Array, Array]:
    """``(q int8 [K, N], scale f32 [N])`` with ``kernel ~= q * scale``: symmetric, per output column,
    ``scale = max |kernel[:, n]| / 127`` (an all-zero column gets scale 1), ``q = round(kernel / scale)``.

    A numpy array (a checkpoint's tensor, as it is read) is quantized on the host in float64, so ``q`` does
    not depend on float32 rounding at a half step; a jax array on its device in float32 (``q`` may then
    differ by one step where ``kernel / scale`` lies within float32's rounding of a half)."""
    xp, wide = (np, np.float64) if isinstance(kernel, np.ndarray) else (jnp, jnp.float32)
    kernel = kernel.astype(wide)
    absmax = xp.max(xp.abs(kernel), axis=0)
    scale = xp.where(absmax > 0, absmax / 127.0, 1.0)
    q = xp.clip(xp.round(kernel / scale), -127, 127).astype(xp.int8)
    return q, scale.astype(xp.float32)


class Linear(nnx.Module):
    """``y = x @ kernel + bias`` with ``kernel [in, out]`` (``nnx.Linear``'s parameter names and layout), its
    product decided by ``project``. ``quantize()`` turns it into the int8 form in place."""

    def __init__(self, in_features: int, out_features: int, *, use_bias: bool = True,
                 param_dtype: jnp.dtype = jnp.float32, rngs: nnx.Rngs):
        self.in_features, self.out_features = in_features, out_features
        # nnx.Linear's initialisation (the same values from the same rngs); checkpoints overwrite it
        self.kernel = nnx.Param(nnx.initializers.lecun_normal()(rngs.params(), (in_features, out_features),
                                                               param_dtype))
        self.bias = nnx.data(nnx.Param(jnp.zeros((out_features,), param_dtype)) if use_bias else None)
        self.kernel_scale: nnx.Param | None = nnx.data(None)  # float32 [out] once quantized

    @property
    def quantized(self) -> bool:
        return self.kernel_scale is not None

    def quantize(self) -> None:
        """Store the kernel as int8 with per-column float32 scales (``quantize_int8``)."""
        if self.quantized:
            return
        q, scale = quantize_int8(self.kernel[...])
        self.kernel = nnx.Param(q)
        self.kernel_scale = nnx.Param(scale)

    def __call__(self, x: Float[Array, "*B K"]) -> Float[Array, "*B N"]:
        scale = None if self.kernel_scale is None else self.kernel_scale[...]
        y = project(x, self.kernel[...], scale)
        return y if self.bias is None else y + self.bias[...].astype(y.dtype)


def project(x: Float[Array, "*B K"], kernel: Array, scale: Float[Array, "N"] | None = None) -> Float[Array, "*B N"]:
    """``x @ kernel`` (``kernel`` float ``[K, N]``, both promoted to one dtype as ``nnx.Linear`` does), or
    ``(x @ q) * scale`` for an int8 ``q [K, N]``, in x's dtype. Few rows go to the CPU kernels inside
    ``few_row_products_on_cpu()``; the rest to XLA (``_xla_product``)."""
    numbers = (((x.ndim - 1,), (0,)), ((), ()))
    if batch_invariant():
        return invariant_product(x, kernel, scale)
    if scale is None:
        dtype = jnp.promote_types(x.dtype, kernel.dtype)
        x, kernel = x.astype(dtype), kernel.astype(dtype)
        if _FEW_ROWS_ON_CPU.is_on() and math.prod(x.shape[:-1]) <= MAX_ROWS:
            return few_rows_dot_general(x, kernel, numbers)
        return _xla_product(x, kernel, numbers)
    rows = math.prod(x.shape[:-1])
    if (_FEW_ROWS_ON_CPU.is_on() and 1 <= rows <= MAX_ROWS and kernel.dtype == jnp.int8
            and int8_matmul_unavailable(x.dtype) is None):
        y = skinny_matmul_int8_cpu(x.reshape(rows, x.shape[-1]), kernel, scale)
        return y.reshape(*x.shape[:-1], kernel.shape[1])
    return (_xla_product(x, kernel, numbers, jnp.float32) * scale).astype(x.dtype)


def invariant_product(x: Float[Array, "*B K"], kernel: Array, scale: Float[Array, "N"] | None = None
                      ) -> Float[Array, "*B N"]:
    """``project``'s product in batch-invariant order (``mmjax.batch_invariant``): each output element summed
    over ``K`` in one order whatever the number of rows. On CPU the native kernels with ``fixed_order`` (one
    chain of float32 FMAs over ``k``); elsewhere, or where they cannot run, XLA's dot on tiles of
    ``TILE_ROWS`` rows in a loop (one product shape for every row). Differentiable (XLA's products backward)."""
    rows = x.reshape(-1, x.shape[-1])
    if scale is None:
        dtype = jnp.promote_types(x.dtype, kernel.dtype)
        rows, kernel = rows.astype(dtype), kernel.astype(dtype)
        if cpu_kernel_serves(dtype):
            y = skinny_matmul_cpu(rows, kernel, fixed_order=True)
        else:
            y = in_row_tiles(rows, lambda t: _xla_product(t, kernel, (((1,), (0,)), ((), ())), jnp.float32))
        return y.astype(dtype).reshape(*x.shape[:-1], kernel.shape[1])
    if kernel.dtype == jnp.int8 and cpu_kernel_serves(x.dtype) and int8_matmul_unavailable(x.dtype) is None:
        y = skinny_matmul_int8_cpu(rows, kernel, scale, fixed_order=True)
    else:
        y = in_row_tiles(rows, lambda t: _xla_product(t, kernel, (((1,), (0,)), ((), ())), jnp.float32) * scale)
    return y.astype(x.dtype).reshape(*x.shape[:-1], kernel.shape[1])


def _xla_product(x: Array, kernel: Array, numbers: Any, out_dtype: Any = None) -> Array:
    """XLA's ``dot_general`` in ``out_dtype`` (default x's). On TPU and GPU the operands go in as they are
    (the int8 kernel converted to x's dtype in the dot's fusion). On CPU, what multiplies fastest there
    (``benchmarks/prefill_matmul.py``, ``[2048, 512] @ [512, 1376]``, 2 cores):

    - with AMX (``multiplies_bfloat16_in_tiles``), bfloat16 activations and bfloat16 (or int8, exact in
      bfloat16) weights multiply as bfloat16 into a float32 result, which XLA's YNNPACK dot runs on the
      tile unit: 2.9 ms against 10.0 for float32 operands on the Xeon host (a bfloat16 result is not
      sent there: 17.7 ms). The products are exact in float32 either way; only the order of the float32
      sums differs from the float32 path's;
    - otherwise both operands in float32: XLA:CPU multiplies float32 fastest, and 16-bit or mixed
      operands slower (on the AMD host: float32 16.0 ms; bfloat16 17.0, through float32 16.7, with a
      float32 result 22.4; int8 weights with bfloat16 activations 23.4, through float32 16.8).
    """
    out_dtype = x.dtype if out_dtype is None else out_dtype
    if jax.default_backend() == "cpu":
        if x.dtype == jnp.bfloat16 and kernel.dtype in (jnp.bfloat16, jnp.int8) and multiplies_bfloat16_in_tiles():
            y = jax.lax.dot_general(x, kernel.astype(jnp.bfloat16), numbers, preferred_element_type=jnp.float32)
            return y.astype(out_dtype)
        y = jax.lax.dot_general(x.astype(jnp.float32), kernel.astype(jnp.float32), numbers)
        return y.astype(out_dtype)
    if kernel.dtype != x.dtype:  # int8 (the convert fuses into the dot), or LoRA's float32 ``lora_kernel``
        kernel = kernel.astype(x.dtype)
    return jax.lax.dot_general(x, kernel, numbers, preferred_element_type=out_dtype)


def lora_kernel(kernel: Array, scale: Float[Array, "N"] | None, delta: Float[Array, "K N"]) -> Array:
    """The kernel that multiplies as ``kernel`` plus a LoRA delta (``alpha / r · a @ b``) in ``project``, for
    training: a float kernel gives ``kernel + delta`` in its dtype; an int8 ``q`` with its ``scale`` gives the
    float32 ``q + delta / scale``, which ``project`` (a float kernel beside a scale: XLA's product) multiplies
    as ``x @ (q * scale) + x @ delta``: the base stays int8 and frozen, the adapter float (QLoRA)."""
    if scale is None:
        return kernel + delta.astype(kernel.dtype)
    return kernel.astype(jnp.float32) + delta.astype(jnp.float32) / scale


def merged_kernel(kernel: Array, scale: Float[Array, "N"] | None, delta: Float[Array, "K N"]
                  ) -> tuple[Array, Array | None]:
    """``(kernel, scale)`` with a LoRA delta folded in for good: float ``kernel + delta``; int8: the sum
    ``q * scale + delta`` quantized again (``quantize_int8``), so the trained model is stored as the base was."""
    if scale is None:
        return kernel + delta.astype(kernel.dtype), None
    return quantize_int8(kernel.astype(jnp.float32) * scale + delta.astype(jnp.float32))


def tied_head_product(hidden: Float[Array, "*B D"], embedding: Float[Array, "V D"]) -> Float[Array, "*B V"]:
    """``hidden @ embedding.T`` (a tied LM head; the embedding read where it lies, no transposed copy),
    on the CPU kernel for few rows inside ``few_row_products_on_cpu()``."""
    numbers = (((hidden.ndim - 1,), (1,)), ((), ()))
    if batch_invariant():
        rows = hidden.reshape(-1, hidden.shape[-1])
        if cpu_kernel_serves(hidden.dtype, transposed=True) and hidden.dtype == embedding.dtype:
            out = transposed_skinny_matmul_cpu(rows, embedding)  # one order for each (row, column) by construction
        else:
            out = in_row_tiles(rows, lambda t: jax.lax.dot_general(t, embedding, (((1,), (1,)), ((), ()))))
        return out.reshape(*hidden.shape[:-1], embedding.shape[0])
    if _FEW_ROWS_ON_CPU.is_on():
        return few_rows_dot_general(hidden, embedding, numbers)
    return jax.lax.dot_general(hidden, embedding, numbers)


def quantize_linear_layers(model: nnx.Module, pattern: str) -> nnx.Module:
    """Quantize (``Linear.quantize``) every ``Linear`` of ``model`` whose "/"-joined path matches the regex
    ``pattern`` (``re.search``); returns ``model``. Under ``nnx.eval_shape`` it only changes shapes and dtypes."""
    regex = re.compile(pattern)
    found = 0
    for path, module in nnx.iter_modules(model):
        if isinstance(module, Linear) and regex.search("/".join(map(str, path))):
            module.quantize()
            found += 1
    if not found:
        raise ValueError(f"no linear layer of {type(model).__name__} matches {pattern!r} to quantize")
    return model


def check_quantization(quantization: Any) -> str | None:
    """``quantization`` if it is None or one of ``QUANTIZATIONS``, else a ValueError naming the choices."""
    if quantization is not None and quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization must be None or one of {list(QUANTIZATIONS)}, got {quantization!r}")
    return quantization
