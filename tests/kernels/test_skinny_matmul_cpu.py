"""The few-row matmul kernel (``mmjax.kernels_cpu.skinny_matmul_cpu``) against float64 numpy, its
``dot_general`` for linear layers, its gradients, and its inputs refused by name; the same for its
transposed-weight variant (``transposed_skinny_matmul_cpu``, ``x @ w.T``: a tied LM head) and its
int8-weight variant (``skinny_matmul_int8_cpu``, ``(x @ w) * scale``).

Shapes cross the kernel's edges: rows in passes of 8, w's rows in blocks of 8
(K not a multiple), columns in vectors of 16 and chunks of at most 512 (N not
a multiple, several chunks), one thread's chunk or many. For the transposed
variant: rows of x in passes of 4, 2 and 1, rows of w in pairs (N odd), K not
a whole number of vectors, work items of at most 256 rows of w. The int8
variant runs the first's chunks: the same edges, and int8's extremes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.kernels_cpu import (
    few_rows_dot_general,
    int8_matmul_unavailable,
    matmul_unavailable,
    skinny_matmul_cpu,
    skinny_matmul_int8_cpu,
    transposed_matmul_unavailable,
    transposed_skinny_matmul_cpu,
)
from mmjax.kernels_cpu.skinny_matmul import INT8_TARGET, MAX_ROWS, TARGET, TRANSPOSED_TARGET, min_rows

SHAPES = [  # (M, K, N)
    (1, 8, 16), (2, 13, 5), (7, 64, 33), (8, 512, 512), (9, 37, 600), (16, 24, 1030), (17, 100, 1376), (32, 16, 48),
    # the rows of w split into slices whose sums are added at the end: slices of 80 rows and a last one of 60 (not
    # whole blocks of 8), 2 + 1 rows of x, chunks of 4096 / 2048 / 512 columns with a ragged last one
    (1, 300, 1030), (3, 1377, 520), (1, 512, 9000), (8, 129, 520),
]


def operands(shape, dtype=jnp.float32, seed=0):
    m, k, n = shape
    rng = np.random.default_rng(seed)
    return (jnp.asarray(rng.standard_normal((m, k)), dtype), jnp.asarray(rng.standard_normal((k, n)), dtype))


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_matches_float64_numpy(shape):
    x, w = operands(shape)
    expected = np.asarray(x, np.float64) @ np.asarray(w, np.float64)
    out = jax.jit(skinny_matmul_cpu)(x, w)
    assert out.shape == expected.shape and out.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(out), expected, rtol=1e-5, atol=1e-5 * np.sqrt(shape[1]))


def test_bfloat16_accumulates_in_float32_and_rounds_once():
    x, w = operands((8, 256, 600), jnp.bfloat16, seed=1)
    exact = np.asarray(x, np.float64) @ np.asarray(w, np.float64)  # of the bfloat16 inputs, exactly
    out = skinny_matmul_cpu(x, w)
    assert out.dtype == jnp.bfloat16
    # one rounding to bfloat16 (8 bits of mantissa) of a float32 sum: within half an ulp of the exact sum,
    # and equal to the exact sum rounded wherever the float32 sum's own error does not cross a rounding edge
    got = np.asarray(out, np.float64)
    np.testing.assert_allclose(got, exact, rtol=2 ** -8, atol=1e-3)
    assert np.mean(got == np.asarray(jnp.asarray(exact, jnp.bfloat16), np.float64)) > 0.95


def test_gradients_are_those_of_the_plain_product():
    x, w = operands((4, 24, 40), seed=2)
    g = jnp.asarray(np.random.default_rng(3).standard_normal((4, 40)), jnp.float32)
    loss = lambda f: lambda x, w: jnp.sum(f(x, w) * g)  # noqa: E731
    ours = jax.grad(loss(skinny_matmul_cpu), argnums=(0, 1))(x, w)
    plain = jax.grad(loss(jnp.matmul), argnums=(0, 1))(x, w)
    for a, b in zip(ours, plain):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)


def test_bad_inputs_are_named_before_the_call():
    x, w = operands((4, 8, 16))
    with pytest.raises(ValueError, match=r"expected x \[M, K\] and w \[K, N\].*\(4, 8\) and \(16, 8\)"):
        skinny_matmul_cpu(x, w.T)
    with pytest.raises(ValueError, match="one dtype.*float32 and bfloat16"):
        skinny_matmul_cpu(x, w.astype(jnp.bfloat16))
    with pytest.raises(ValueError, match="cannot run: dtype float16"):
        skinny_matmul_cpu(x.astype(jnp.float16), w.astype(jnp.float16))
    assert "float16" in matmul_unavailable(jnp.float16)


def custom_calls(fn, *args) -> list[str]:
    text = jax.jit(fn).lower(*args).as_text()
    return [line for line in text.splitlines() if TARGET in line]


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("rows", [1, 2, 8, MAX_ROWS, MAX_ROWS + 1])
def test_dot_general_sends_only_few_rows_to_the_kernel(rows, dtype):
    """[B, T, K] . [K, N] as nnx.Linear calls it: the kernel for min_rows(dtype)..MAX_ROWS rows (one row
    included), XLA otherwise; the same values either way (bfloat16: within a rounding)."""
    x, w = operands((rows, 24, 40), dtype, seed=4)
    x3 = x.reshape(1, rows, 24)
    numbers = (((2,), (0,)), ((), ()))
    out = few_rows_dot_general(x3, w, numbers)
    tolerance = dict(rtol=1e-5, atol=1e-5) if dtype == jnp.float32 else dict(rtol=2 ** -7, atol=2 ** -5)
    np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(jax.lax.dot_general(x3, w, numbers), np.float32),
                               **tolerance)
    used = bool(custom_calls(lambda a, b: few_rows_dot_general(a, b, numbers), x3, w))
    assert used == (min_rows(dtype) <= rows <= MAX_ROWS)
    assert min_rows(dtype) == 1


def test_dot_general_leaves_other_products_to_xla(monkeypatch):
    x, w = operands((4, 24, 40))
    numbers = (((1,), (0,)), ((), ()))
    assert not custom_calls(lambda a, b: few_rows_dot_general(a, b, numbers, preferred_element_type=jnp.bfloat16), x, w)
    assert not custom_calls(lambda a, b: few_rows_dot_general(a.T, b.T, (((0,), (1,)), ((), ()))), x, w)  # other axes
    monkeypatch.setenv("MMJAX_CPU_KERNEL", "0")
    assert not custom_calls(lambda a, b: few_rows_dot_general(a, b, numbers), x + 0, w)
    assert "MMJAX_CPU_KERNEL=0" in matmul_unavailable(jnp.float32)


# ---- the transposed variant: x [M, K] . w [N, K]^T --------------------------------------------------

TRANSPOSED_SHAPES = [  # (M, K, N): M from 2 to 32 (not all multiples of 4 or 8), K and N odd, one item or many
    (2, 13, 5), (3, 7, 1), (5, 33, 17), (7, 64, 33), (8, 512, 601), (9, 37, 515), (12, 40, 384), (16, 24, 1031),
    (17, 101, 777), (31, 9, 3), (32, 255, 1029),
]


def transposed_operands(shape, dtype=jnp.float32, seed=0):
    m, k, n = shape
    rng = np.random.default_rng(seed)
    return (jnp.asarray(rng.standard_normal((m, k)), dtype), jnp.asarray(rng.standard_normal((n, k)), dtype))


@pytest.mark.parametrize("shape", TRANSPOSED_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_transposed_matches_float64_numpy_and_xla(shape):
    x, w = transposed_operands(shape)
    expected = np.asarray(x, np.float64) @ np.asarray(w, np.float64).T
    out = jax.jit(transposed_skinny_matmul_cpu)(x, w)
    assert out.shape == expected.shape and out.dtype == jnp.float32
    tolerance = dict(rtol=1e-5, atol=1e-5 * np.sqrt(shape[1]))
    np.testing.assert_allclose(np.asarray(out), expected, **tolerance)
    np.testing.assert_allclose(np.asarray(out), np.asarray(jax.jit(lambda x, w: x @ w.T)(x, w)), **tolerance)


@pytest.mark.parametrize("shape", [(2, 13, 5), (8, 256, 601), (17, 101, 777), (32, 255, 1029)],
                         ids=lambda s: "x".join(map(str, s)))
def test_transposed_bfloat16_accumulates_in_float32_and_rounds_once(shape):
    x, w = transposed_operands(shape, jnp.bfloat16, seed=1)
    exact = np.asarray(x, np.float64) @ np.asarray(w, np.float64).T  # of the bfloat16 inputs, exactly
    out = transposed_skinny_matmul_cpu(x, w)
    assert out.dtype == jnp.bfloat16
    got = np.asarray(out, np.float64)
    np.testing.assert_allclose(got, exact, rtol=2 ** -8, atol=1e-3)
    assert np.mean(got == np.asarray(jnp.asarray(exact, jnp.bfloat16), np.float64)) > 0.95
    xla = np.asarray(jax.jit(lambda x, w: jnp.dot(x, w.T, preferred_element_type=jnp.float32))(x, w))
    assert np.mean(got == np.asarray(jnp.asarray(xla, jnp.bfloat16), np.float64)) > 0.95


def test_transposed_gradients_are_those_of_the_plain_product():
    x, w = transposed_operands((4, 24, 40), seed=2)
    g = jnp.asarray(np.random.default_rng(3).standard_normal((4, 40)), jnp.float32)
    loss = lambda f: lambda x, w: jnp.sum(f(x, w) * g)  # noqa: E731
    ours = jax.grad(loss(transposed_skinny_matmul_cpu), argnums=(0, 1))(x, w)
    plain = jax.grad(loss(lambda x, w: x @ w.T), argnums=(0, 1))(x, w)
    for a, b in zip(ours, plain):
        assert a.shape == b.shape
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)


def test_transposed_bad_inputs_are_named_before_the_call():
    x, w = transposed_operands((4, 8, 16))
    with pytest.raises(ValueError, match=r"expected x \[M, K\] and w \[N, K\].*\(4, 8\) and \(8, 16\)"):
        transposed_skinny_matmul_cpu(x, w.T)
    with pytest.raises(ValueError, match="one dtype.*float32 and bfloat16"):
        transposed_skinny_matmul_cpu(x, w.astype(jnp.bfloat16))
    with pytest.raises(ValueError, match="cannot run: dtype float16"):
        transposed_skinny_matmul_cpu(x.astype(jnp.float16), w.astype(jnp.float16))
    assert "float16" in transposed_matmul_unavailable(jnp.float16)


def transposed_calls(fn, *args) -> list[str]:
    text = jax.jit(fn).lower(*args).as_text()
    return [line for line in text.splitlines() if TRANSPOSED_TARGET in line]


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("rows", [1, 2, 5, MAX_ROWS, MAX_ROWS + 1])
def test_dot_general_sends_few_rows_against_rhs_rows_to_the_transposed_kernel(rows, dtype):
    """[B, T, K] . [N, K] contracting both last axes (a tied LM head): the transposed kernel for
    min_rows(dtype)..MAX_ROWS rows, XLA otherwise; the same values either way, and never the [K, N] kernel."""
    x, w = transposed_operands((rows, 24, 41), dtype, seed=4)
    x3 = x.reshape(1, rows, 24)
    numbers = (((2,), (1,)), ((), ()))
    out = few_rows_dot_general(x3, w, numbers)
    assert out.shape == (1, rows, 41)
    tolerance = dict(rtol=1e-5, atol=1e-5) if dtype == jnp.float32 else dict(rtol=2 ** -7, atol=2 ** -5)
    np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(jax.lax.dot_general(x3, w, numbers), np.float32),
                               **tolerance)
    used = bool(transposed_calls(lambda a, b: few_rows_dot_general(a, b, numbers), x3, w))
    assert used == (min_rows(dtype) <= rows <= MAX_ROWS)
    assert not custom_calls(lambda a, b: few_rows_dot_general(a, b, numbers), x3, w)


def test_transposed_kernel_is_switched_off_with_the_other(monkeypatch):
    x, w = transposed_operands((4, 24, 40))
    monkeypatch.setenv("MMJAX_CPU_KERNEL", "0")
    assert not transposed_calls(lambda a, b: few_rows_dot_general(a, b, (((1,), (1,)), ((), ()))), x + 0, w)
    assert "MMJAX_CPU_KERNEL=0" in transposed_matmul_unavailable(jnp.float32)


# ---- int8 weights with per-column scales: (x [M, K] . w [K, N]) * scale [N] --------------------------------

INT8_ROWS = [1, 2, 3, 5, 8, 13, 32]  # passes of 8, 4, 2 and 1, and a row alone
INT8_KN = [(37, 100), (13, 1030), (512, 1000)]  # K past whole blocks of 8 rows; N past whole vectors and chunks


def int8_operands(m, k, n, dtype=jnp.float32, seed=0):
    rng = np.random.default_rng(seed)
    w = rng.integers(-127, 128, (k, n), dtype=np.int8)
    w[0, ::2], w[0, 1::2], w[:, -1] = -127, 127, -127  # the symmetric range's ends, in the tail column too
    w[-1, 0] = -128  # int8's one asymmetric value: sign-extended like the others
    scale = rng.uniform(0.5, 2.0, n) / 127
    return (jnp.asarray(rng.standard_normal((m, k)), dtype), jnp.asarray(w), jnp.asarray(scale, jnp.float32))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("kn", INT8_KN, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("rows", INT8_ROWS)
def test_int8_matches_float64_numpy(rows, kn, dtype):
    """Within the float32 error bound of a sum of K products, then (bfloat16) one rounding to nearest.

    Each of the K + 1 float32 roundings (products, sums in any order, the scale) is at most u = 2^-24 of its
    value, so |error| <= (K + 1) u sum|x w| s (Higham's gamma); rounding to bfloat16 (8 bits) adds 2^-8 of the value."""
    x, w, scale = int8_operands(rows, *kn, dtype, seed=rows)
    x64, w64, s64 = (np.asarray(a, np.float64) for a in (x, w, scale))
    exact = (x64 @ w64) * s64  # of x as given (bfloat16 values are exact in float64)
    out = skinny_matmul_int8_cpu(x, w, scale)
    assert out.shape == exact.shape and out.dtype == dtype
    bound = (kn[0] + 1) * 2.0 ** -24 * (np.abs(x64) @ np.abs(w64)) * s64
    if dtype == jnp.bfloat16:
        bound = bound * (1 + 2.0 ** -8) + 2.0 ** -8 * np.abs(exact)
    assert np.all(np.abs(np.asarray(out, np.float64) - exact) <= bound)


def test_int8_bfloat16_rounds_once():
    """bfloat16 out: the float32 result rounded once, so nearly every value is the exact one rounded."""
    x, w, scale = int8_operands(8, 512, 1000, jnp.bfloat16, seed=1)
    exact = (np.asarray(x, np.float64) @ np.asarray(w, np.float64)) * np.asarray(scale, np.float64)
    got = np.asarray(skinny_matmul_int8_cpu(x, w, scale), np.float64)
    assert np.mean(got == np.asarray(jnp.asarray(exact, jnp.bfloat16), np.float64)) > 0.95


def test_int8_gradient_is_that_of_the_plain_formula():
    """d/dx of (x @ w) * scale is (g * scale) @ w.T; w and scale are constants (zero cotangents)."""
    x, w, scale = int8_operands(3, 37, 100, seed=2)
    g = jnp.asarray(np.random.default_rng(3).standard_normal((3, 100)), jnp.float32)
    plain = lambda x, w, s: (x @ w.astype(jnp.float32)) * s  # noqa: E731
    loss = lambda f: lambda x, s: jnp.sum(f(x, w, s) * g)  # noqa: E731
    dx, dscale = jax.jit(jax.grad(loss(skinny_matmul_int8_cpu), argnums=(0, 1)))(x, scale)
    np.testing.assert_allclose(np.asarray(dx), np.asarray(jax.grad(loss(plain))(x, scale)), rtol=1e-5, atol=1e-5)
    assert not np.any(np.asarray(dscale))
    _, vjp = jax.vjp(skinny_matmul_int8_cpu, x, w, scale)
    _, dw, _ = vjp(g)
    assert dw.shape == w.shape and dw.dtype == jax.dtypes.float0
    xb = x.astype(jnp.bfloat16)
    assert jax.grad(lambda x: jnp.sum(skinny_matmul_int8_cpu(x, w, scale).astype(jnp.float32)))(xb).dtype == xb.dtype


def test_int8_bad_inputs_are_named_before_the_call():
    x, w, scale = int8_operands(4, 8, 16)
    shapes = r"expected x \[M, K\], w \[K, N\] and scale \[N\], got "
    with pytest.raises(ValueError, match=shapes + r"\(4, 8\), \(16, 8\) and \(16,\)"):
        skinny_matmul_int8_cpu(x, w.T, scale)
    with pytest.raises(ValueError, match=shapes + r"\(4, 8\), \(8, 16\) and \(15,\)"):
        skinny_matmul_int8_cpu(x, w, scale[:15])
    with pytest.raises(ValueError, match=shapes + r"\(32,\)"):
        skinny_matmul_int8_cpu(x.reshape(-1), w, scale)
    dtypes = "expected x float32 or bfloat16, w int8 and scale float32, got "
    with pytest.raises(ValueError, match=dtypes + "float32, float32 and float32"):
        skinny_matmul_int8_cpu(x, w.astype(jnp.float32), scale)
    with pytest.raises(ValueError, match=dtypes + "float32, uint8 and float32"):
        skinny_matmul_int8_cpu(x, w.astype(jnp.uint8), scale)
    with pytest.raises(ValueError, match=dtypes + "float16, int8 and float32"):
        skinny_matmul_int8_cpu(x.astype(jnp.float16), w, scale)
    with pytest.raises(ValueError, match=dtypes + "float32, int8 and bfloat16"):
        skinny_matmul_int8_cpu(x, w, scale.astype(jnp.bfloat16))
    assert "float16" in int8_matmul_unavailable(jnp.float16)


def test_int8_handler_refuses_what_python_would():
    """The C++ handler's own checks, past the Python ones (a direct ffi_call)."""
    x, w, scale = int8_operands(4, 8, 16)
    assert int8_matmul_unavailable(jnp.float32) is None
    call = lambda *args: jax.ffi.ffi_call(INT8_TARGET, jax.ShapeDtypeStruct((4, 16), jnp.float32))(  # noqa: E731
        *args, fixed_order=False)
    with pytest.raises(jax.errors.JaxRuntimeError, match="expected w int8, scale float32"):
        call(x, w.astype(jnp.float32), scale)
    with pytest.raises(jax.errors.JaxRuntimeError, match=r"expected x \[M, K\], w \[K, N\], scale \[N\]"):
        call(x, w, scale[:8])


def test_int8_is_switched_off_with_the_others(monkeypatch):
    monkeypatch.setenv("MMJAX_CPU_KERNEL", "0")
    assert "MMJAX_CPU_KERNEL=0" in int8_matmul_unavailable(jnp.float32)
    x, w, scale = int8_operands(2, 8, 16)
    with pytest.raises(ValueError, match="cannot run: switched off"):
        skinny_matmul_int8_cpu(x, w, scale)
