"""The batch-invariant primitives (``mmjax.batch_invariant``): the fixed-order products and row sums give a row
the same bits whatever rows surround it, against float64 numpy; the per-element functions give an element the
same bits whatever array it is in; the unfused copy keeps a product from being contracted into an FMA."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.batch_invariant import (
    batch_invariant_numerics, elementwise, fixed_order_log_softmax, fixed_order_sum, separately)
from mmjax.kernels_cpu.fixed_math import FUNCTIONS, fixed_unary
from mmjax.kernels_cpu.skinny_matmul import skinny_matmul_cpu, skinny_matmul_int8_cpu
from mmjax.models.common.linear import project, quantize_int8, tied_head_product

RNG = np.random.default_rng(0)
X = jnp.asarray(RNG.standard_normal((40, 300)), jnp.float32)
W = jnp.asarray(RNG.standard_normal((300, 520)), jnp.float32)
WINDOWS = [(0, 1), (5, 6), (0, 2), (3, 5), (7, 10), (0, 8), (2, 19), (0, 40)]  # (start, stop) rows


def same_bits(a, b) -> bool:
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    return a.shape == b.shape and bool(np.all(a.view(np.uint32) == b.view(np.uint32)))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_fixed_order_product_gives_a_row_the_same_bits_in_any_batch(dtype):
    x, w = X.astype(dtype), W.astype(dtype)
    full = jax.jit(skinny_matmul_cpu, static_argnums=2)(x, w, True)
    half = dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(full, np.float64), np.asarray(x, np.float64) @ np.asarray(w, np.float64),
                               rtol=1e-2 if half else 1e-5, atol=1e-3 if half else 1e-4)
    for start, stop in WINDOWS:
        assert same_bits(skinny_matmul_cpu(x[start:stop], w, True), full[start:stop])


def test_without_fixed_order_one_row_sums_in_another_order():
    """The default splits w's rows for one or two rows (faster): the bits differ, which the test above would see."""
    full = skinny_matmul_cpu(X, W, True)
    assert not same_bits(skinny_matmul_cpu(X[:1], W, False), full[:1])


def test_int8_fixed_order_product_gives_a_row_the_same_bits_in_any_batch():
    q, scale = quantize_int8(np.asarray(W))
    full = skinny_matmul_int8_cpu(X, jnp.asarray(q), jnp.asarray(scale), True)
    for start, stop in WINDOWS:
        assert same_bits(skinny_matmul_int8_cpu(X[start:stop], jnp.asarray(q), jnp.asarray(scale), True),
                         full[start:stop])


def invariant(fn):
    def traced(*args):
        with batch_invariant_numerics():
            return fn(*args)
    return jax.jit(traced)


def test_project_tied_head_and_row_sums_in_invariant_numerics():
    product, head, sums = invariant(project), invariant(tied_head_product), invariant(fixed_order_sum)
    log_softmax = invariant(fixed_order_log_softmax)
    full = [product(X, W), head(X, W.T), sums(X), log_softmax(X)]
    np.testing.assert_allclose(np.asarray(full[2]), np.asarray(X, np.float64).sum(-1), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(np.asarray(full[3]), np.asarray(jax.nn.log_softmax(X)), atol=1e-5)
    for start, stop in WINDOWS:
        x = X[start:stop]
        for ours, whole in zip([product(x, W), head(x, W.T), sums(x), log_softmax(x)], full):
            assert same_bits(ours, whole[start:stop])


def test_project_invariance_holds_for_a_leading_batch_axis():
    product = invariant(project)
    x = X.reshape(4, 10, 300)
    assert same_bits(product(x, W).reshape(40, 520), product(X, W))


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_elementwise_gives_an_element_the_same_bits_in_any_array(name):
    x = jnp.asarray(RNG.uniform(0.05, 4.0, 1000), jnp.float32)
    full = jax.jit(lambda v: fixed_unary(name, v))(x)
    reference = {"exp": np.exp, "log": np.log, "rsqrt": lambda v: 1 / np.sqrt(v), "cos": np.cos, "sin": np.sin,
                 "logistic": lambda v: 1 / (1 + np.exp(-v)), "tanh": np.tanh, "copy": lambda v: v}[name]
    np.testing.assert_allclose(np.asarray(full), reference(np.asarray(x, np.float64)), rtol=3e-7)
    for size in (1, 3, 7, 8, 15, 33):  # XLA:CPU's own exp of 3 or 7 floats differs from the same floats' in 1000
        assert same_bits(jax.jit(lambda v: elementwise(name, v) if name != "copy" else separately(v)[0])(x[:size]),
                         full[:size])


def test_separately_rounds_the_product_before_the_sum():
    """XLA:CPU fuses ``a * b + c`` into one FMA; an optimization barrier does not stop it there, the copy does."""
    a, b, c = (jnp.asarray(RNG.standard_normal(4096), jnp.float32) for _ in range(3))
    rounded = (np.asarray(a) * np.asarray(b)).astype(np.float32) + np.asarray(c)
    fused = (np.asarray(a, np.float64) * np.asarray(b) + np.asarray(c)).astype(np.float32)
    assert not np.array_equal(rounded, fused)
    assert same_bits(jax.jit(lambda a, b, c: a * b + c)(a, b, c), fused)
    assert same_bits(jax.jit(lambda a, b, c: separately(a * b)[0] + c)(a, b, c), rounded)


def test_fixed_unary_refuses_an_unknown_function():
    with pytest.raises(ValueError, match="name must be one of"):
        fixed_unary("erf", X)
