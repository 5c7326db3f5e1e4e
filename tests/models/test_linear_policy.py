"""The linear-layer policy (``mmjax.models.common.linear``): ``Linear`` equals ``nnx.Linear``; inside
``few_row_products_on_cpu`` few rows go to the native CPU kernels (float, tied head, int8), with the values
of the XLA products; outside it, XLA only."""

from __future__ import annotations

import contextlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mmjax.kernels_cpu.skinny_matmul import TARGET, TRANSPOSED_TARGET
from mmjax.models.common.decoder import LlamaForCausalLM
from mmjax.models.common.decoder_config import DecoderConfig
from mmjax.models.common.linear import Linear, few_row_products_on_cpu


def custom_calls(fn, *args, target: str = TARGET) -> list[str]:
    text = jax.jit(fn).lower(*args).as_text()
    return [line for line in text.splitlines() if target in line]


def transposed_calls(fn, *args) -> list[str]:
    return custom_calls(fn, *args, target=TRANSPOSED_TARGET)


def test_linear_layers_of_a_merged_model_use_it():
    """What the engine's step does with its model: inside few_row_products_on_cpu every Linear multiplies few
    rows on the kernel, with the values of nnx.Linear's layers of the same parameters."""
    model = nnx.Sequential(Linear(24, 48, rngs=nnx.Rngs(0)), Linear(48, 16, use_bias=False, rngs=nnx.Rngs(1)))
    reference = nnx.Sequential(nnx.Linear(24, 48, rngs=nnx.Rngs(0)), nnx.Linear(48, 16, use_bias=False,
                                                                                rngs=nnx.Rngs(1)))
    graphdef, state = nnx.split(model)
    x = jnp.asarray(np.random.default_rng(5).standard_normal((1, 4, 24)), jnp.float32)

    def run(state, x, native):
        merged = nnx.merge(graphdef, state)
        with few_row_products_on_cpu() if native else contextlib.nullcontext():
            return merged(x)

    assert len(custom_calls(lambda s, x: run(s, x, True), state, x)) >= 2
    assert not custom_calls(lambda s, x: run(s, x, False), state, x)
    np.testing.assert_allclose(np.asarray(jax.jit(lambda s, x: run(s, x, True))(state, x)), np.asarray(model(x)),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(jax.jit(lambda s, x: run(s, x, True))(state, x)), np.asarray(reference(x)),
                               rtol=1e-5, atol=1e-5)



def test_tied_lm_head_of_a_merged_model_uses_it():
    """What the engine's step does with a tied decoder: its LM head (hidden @ E.T) on the transposed kernel,
    with attend's values; the untied model's head stays on the [K, N] kernel."""
    config = DecoderConfig(vocab_size=301, hidden_size=40, intermediate_size=52, num_layers=1, num_heads=5,
                           num_kv_heads=1, head_dim=8, tie_word_embeddings=True)
    model = LlamaForCausalLM(config, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model)
    hidden = jnp.asarray(np.random.default_rng(5).standard_normal((6, 40)), jnp.float32)

    def head(state, hidden, native):
        merged = nnx.merge(graphdef, state)
        with few_row_products_on_cpu() if native else contextlib.nullcontext():
            return merged.logits(hidden)

    assert len(transposed_calls(lambda s, h: head(s, h, True), state, hidden)) == 1
    assert not transposed_calls(lambda s, h: head(s, h, False), state, hidden)
    np.testing.assert_allclose(np.asarray(jax.jit(lambda s, h: head(s, h, True))(state, hidden)),
                               np.asarray(model.embed_tokens.attend(hidden)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("rows", [1, 8, 32, 33])
def test_int8_layers_send_up_to_32_rows_to_the_int8_kernel(dtype, rows):
    """An int8 Linear inside few_row_products_on_cpu: 1-32 rows on the int8 kernel (even one row: XLA would
    convert the whole weight), more rows to XLA; the values of the plain formula (x @ q) * scale either way."""
    from mmjax.kernels_cpu.skinny_matmul import INT8_TARGET

    layer = Linear(48, 40, rngs=nnx.Rngs(3))
    layer.quantize()
    graphdef, state = nnx.split(layer)
    x = jnp.asarray(np.random.default_rng(rows).standard_normal((1, rows, 48)), dtype)

    def run(state, x, native):
        with few_row_products_on_cpu() if native else contextlib.nullcontext():
            return nnx.merge(graphdef, state)(x)

    calls = custom_calls(lambda s, x: run(s, x, True), state, x, target=INT8_TARGET)
    assert bool(calls) == (rows <= 32)
    assert not custom_calls(lambda s, x: run(s, x, False), state, x, target=INT8_TARGET)
    q = np.asarray(layer.kernel[...], np.float64)
    want = (np.asarray(x, np.float64) @ q) * np.asarray(layer.kernel_scale[...], np.float64) \
        + np.asarray(layer.bias[...], np.float64)
    tol = 1e-5 if dtype == jnp.float32 else 2e-2
    for native in (True, False):
        got = np.asarray(jax.jit(lambda s, x: run(s, x, native))(state, x), np.float64)
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol * np.abs(want).max())


def dot_operand_types(fn, *args) -> list[str]:
    """The ``(lhs, rhs) -> out`` element types of each dot in ``fn``'s StableHLO, e.g. ``bf16,bf16->f32``."""
    text = jax.jit(fn).lower(*args).as_text()
    tensor = r"tensor<(?:\d+x)*(\w+)>"
    pattern = rf"dot_general.*: \({tensor}, {tensor}\) -> {tensor}"
    return [f"{lhs},{rhs}->{out}" for lhs, rhs, out in re.findall(pattern, text)]


@pytest.mark.parametrize("tiles", [False, True])
@pytest.mark.parametrize("weights", ["bfloat16", "int8", "float32"])
def test_cpu_products_of_many_rows_take_the_operands_the_host_multiplies_fastest(monkeypatch, tiles, weights):
    """A prefill's product (more rows than the kernels take), inside few_row_products_on_cpu or not: on a CPU
    with AMX, bfloat16 activations meet bfloat16 (or int8 as bfloat16) weights in a dot with a float32 result;
    elsewhere, and for float32 activations, both operands go in as float32. The values are the exact
    products summed in float32 either way: within bfloat16's rounding of the float64 formula."""
    from mmjax.models.common import linear

    monkeypatch.setattr(linear, "multiplies_bfloat16_in_tiles", lambda: tiles)
    layer = Linear(48, 40, param_dtype=jnp.float32 if weights == "float32" else jnp.bfloat16, rngs=nnx.Rngs(3))
    if weights == "int8":
        layer.quantize()
    graphdef, state = nnx.split(layer)
    x = jnp.asarray(np.random.default_rng(0).standard_normal((1, 64, 48)), jnp.bfloat16)

    def run(state, x, native):
        with few_row_products_on_cpu() if native else contextlib.nullcontext():
            return nnx.merge(graphdef, state)(x)

    in_tiles = tiles and weights != "float32"
    kernel = np.asarray(layer.kernel[...], np.float64)
    scale = np.asarray(layer.kernel_scale[...], np.float64) if weights == "int8" else 1.0
    want = np.asarray(x, np.float64) @ kernel * scale + np.asarray(layer.bias[...], np.float64)
    for native in (True, False):
        types = dot_operand_types(lambda s, x: run(s, x, native), state, x)
        assert types == ["bf16,bf16->f32" if in_tiles else "f32,f32->f32"], types
        got = np.asarray(jax.jit(lambda s, x: run(s, x, native))(state, x), np.float64)
        np.testing.assert_allclose(got, want, rtol=1e-2, atol=1e-2 * np.abs(want).max())
