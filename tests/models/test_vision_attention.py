"""The vision towers' segment attention: blockwise and banded equal the dense reference, values and gradients.

Layouts are random: runs of rows (frames, or windows of at most ``RUN`` rows) in
order, then padding rows; bucket sizes that are not a multiple of the blocks.
Small heads keep the file quick; the memory checks only compile (never run) a
4096-row call. Shape letters as in ``mmjax.models.common.segment_attention``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.models.common import segment_attention as sa
from mmjax.models.common.segment_attention import Segments, dense_segment_attention, segment_attention, segment_mask
from mmjax.models.common.segment_attention_banded import banded_segment_attention
from mmjax.models.common.segment_attention_blockwise import blockwise_segment_attention

HEADS, HEAD_DIM = 2, 8
RUN = 16  # longest window of the banded layouts, in rows
TOLERANCE = 1e-5  # relative to the largest |value|; float32 measures about 1e-7


def layout(rows: int, real: int, longest: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(segment ids [P], valid [P])``: runs of 1..longest rows over the first ``real`` rows, then padding (-1)."""
    sizes = np.random.default_rng(seed).integers(1, longest + 1, size=real)
    ids = np.repeat(np.arange(real), sizes)[:real]
    return np.concatenate([ids, np.full(rows - real, -1)]).astype(np.int32), np.arange(rows) < real


def qkv(rows: int, seed: int, dtype=jnp.float32) -> tuple[jax.Array, jax.Array, jax.Array]:
    rng = np.random.default_rng(seed)
    return tuple(jnp.asarray(rng.normal(size=(rows, HEADS, HEAD_DIM)) * 2, dtype) for _ in range(3))


def relative_error(a, b) -> float:
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    return float(np.abs(a - b).max() / np.abs(b).max())


def dense(q, k, v, ids, valid):
    return dense_segment_attention(q, k, v, segment_mask(ids, valid))


def blockwise(block: int):
    return jax.jit(lambda q, k, v, ids, valid: blockwise_segment_attention(q, k, v, ids, valid, block=block))


def banded(block: int, chunk: int):
    return jax.jit(lambda q, k, v, ids, valid: banded_segment_attention(q, k, v, ids, valid, block=block, chunk=chunk))


# (rows, real rows, longest segment): one segment over everything, frames straddling blocks, a bucket that is
# not a multiple of the block, a bucket of padding only.
FULL_LAYOUTS = [(256, 256, 256), (300, 290, 70), (200, 131, 40), (96, 0, 1)]


def test_blockwise_equals_dense_when_segments_are_scattered():
    # Not runs in order: each block's partner range spans every block, and the mask alone decides.
    rng = np.random.default_rng(7)
    ids, valid = rng.integers(0, 5, size=200).astype(np.int32), rng.random(200) < 0.8
    q, k, v = qkv(200, seed=7)
    assert relative_error(blockwise(32)(q, k, v, ids, valid), dense(q, k, v, ids, valid)) < TOLERANCE


@pytest.mark.parametrize("rows, real, longest", FULL_LAYOUTS)
@pytest.mark.parametrize("block", [32, 64])
def test_blockwise_equals_dense(rows, real, longest, block):
    ids, valid = layout(rows, real, longest, seed=rows + block)
    q, k, v = qkv(rows, seed=block)
    want = dense(q, k, v, ids, valid)
    got = blockwise(block)(q, k, v, ids, valid)
    assert got.shape == want.shape
    if real:
        assert relative_error(got, want) < TOLERANCE
    assert not np.asarray(got)[real:].any(), "padding rows output zeros"


@pytest.mark.parametrize("rows, real", [(256, 256), (300, 250), (52, 40)])
@pytest.mark.parametrize("block, chunk", [(RUN, 1), (RUN, 3), (24, 4)])
def test_banded_equals_dense_on_runs_no_longer_than_the_block(rows, real, block, chunk):
    ids, valid = layout(rows, real, RUN, seed=rows + chunk)
    q, k, v = qkv(rows, seed=chunk)
    want = dense(q, k, v, ids, valid)
    got = banded(block, chunk)(q, k, v, ids, valid)
    assert relative_error(got, want) < TOLERANCE
    assert not np.asarray(got)[real:].any()


def test_blockwise_and_banded_take_bfloat16():
    ids, valid = layout(200, 180, RUN, seed=5)
    q, k, v = qkv(200, seed=5, dtype=jnp.bfloat16)
    want = dense(q, k, v, ids, valid)
    for got in (blockwise(64)(q, k, v, ids, valid), banded(RUN, 2)(q, k, v, ids, valid)):
        assert got.dtype == jnp.bfloat16
        assert relative_error(got, want) < 2e-2  # bfloat16 outputs: a few ulps at 2**-8


def _grads(attention, q, k, v, ids, valid):
    weights = jnp.asarray(np.random.default_rng(9).normal(size=q.shape), jnp.float32)
    loss = lambda q, k, v: jnp.sum(attention(q, k, v, ids, valid) * weights)  # noqa: E731
    return jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(q, k, v)


@pytest.mark.parametrize("rows, real, longest, implementation", [
    (300, 290, 70, blockwise(64)),
    (200, 131, 40, blockwise(32)),
    (300, 250, RUN, banded(RUN, 3)),
])  # fmt: skip
def test_gradients_equal_dense(rows, real, longest, implementation):
    ids, valid = layout(rows, real, longest, seed=rows)
    q, k, v = qkv(rows, seed=1)
    for got, want in zip(_grads(implementation, q, k, v, ids, valid), _grads(dense, q, k, v, ids, valid)):
        assert relative_error(got, want) < TOLERANCE
        assert not np.asarray(got)[real:].any(), "padding rows get no gradient"


@pytest.mark.parametrize("rows, run", [(200, None), (600, None), (600, RUN), (600, 250)])
def test_segment_attention_dispatch_equals_dense(rows, run, monkeypatch):
    ids, valid = layout(rows, rows - 9, run or 100, seed=3)
    q, k, v = qkv(rows, seed=3)
    calls = []
    for name in ("dense_segment_attention", "banded_segment_attention", "blockwise_segment_attention"):
        real = getattr(sa, name)
        monkeypatch.setattr(sa, name, lambda *a, real=real, name=name, **kw: calls.append(name) or real(*a, **kw))
    got = jax.jit(lambda q, k, v, ids, valid: segment_attention(q, k, v, Segments(ids, valid, run)))(
        q, k, v, ids, valid)
    assert relative_error(got, dense(q, k, v, ids, valid)) < TOLERANCE
    assert calls == [f"{sa.attention_kind(rows, run)}_segment_attention"]
    want = "dense" if rows <= sa.DENSE_MAX_ROWS else "banded" if run == RUN else "blockwise"  # 250: too long to band
    assert sa.attention_kind(rows, run) == want


@pytest.mark.parametrize("run", [None, RUN])
def test_vmapped_over_examples_with_gradients(run):
    # Training encodes the examples of one input shape in one vmapped call and differentiates through it.
    rows = 300  # past the dense attention: blockwise, or banded
    layouts = [layout(rows, real, run or 90, seed=real) for real in (280, 150)]
    ids, valid = (jnp.asarray(np.stack(a)) for a in zip(*layouts))
    q, k, v = (jnp.stack([x, x[::-1]]) for x in qkv(rows, seed=4))

    def loss(attention, q, k, v):
        return jnp.sum(jax.vmap(attention)(q, k, v, ids, valid) ** 2)

    ours = lambda q, k, v, ids, valid: segment_attention(q, k, v, Segments(ids, valid, run))  # noqa: E731
    got = jax.jit(jax.value_and_grad(functools.partial(loss, ours), argnums=(0, 1, 2)))(q, k, v)
    want = jax.value_and_grad(functools.partial(loss, dense), argnums=(0, 1, 2))(q, k, v)
    assert relative_error(got[0], want[0]) < TOLERANCE
    for g, w in zip(got[1], want[1]):
        assert relative_error(g, w) < TOLERANCE


def _temp_bytes(fn, rows: int) -> int:
    spec = jax.ShapeDtypeStruct((rows, HEADS, HEAD_DIM), jnp.float32)
    ids, valid = jax.ShapeDtypeStruct((rows,), jnp.int32), jax.ShapeDtypeStruct((rows,), jnp.bool_)
    return jax.jit(fn).lower(spec, spec, spec, ids, valid).compile().memory_analysis().temp_size_in_bytes


def test_a_4096_row_call_never_holds_p_by_p():
    rows = 4096
    scores = 4 * HEADS * rows * rows  # one [N, P, P] float32 array: 128 MiB
    assert _temp_bytes(dense, rows) >= scores  # the measure sees the dense scores
    full = lambda q, k, v, ids, valid: segment_attention(q, k, v, Segments(ids, valid))  # noqa: E731
    windowed = lambda q, k, v, ids, valid: segment_attention(q, k, v, Segments(ids, valid, RUN))  # noqa: E731
    for fn in (full, windowed):
        assert _temp_bytes(fn, rows) < scores / 20
        loss = lambda q, k, v, ids, valid, fn=fn: jnp.sum(fn(q, k, v, ids, valid))  # noqa: E731
        assert _temp_bytes(jax.grad(loss, argnums=(0, 1, 2)), rows) < scores / 10  # the backward too


@pytest.mark.parametrize("run", [None, RUN])
def test_lowers_for_gpu_and_tpu(run):
    rows = 1000  # blockwise or banded, and not a multiple of their blocks
    spec = jax.ShapeDtypeStruct((rows, HEADS, HEAD_DIM), jnp.bfloat16)
    ids, valid = jax.ShapeDtypeStruct((rows,), jnp.int32), jax.ShapeDtypeStruct((rows,), jnp.bool_)

    def train(q, k, v, ids, valid):
        attention = lambda q, k, v: segment_attention(q, k, v, Segments(ids, valid, run))  # noqa: E731
        out, pullback = jax.vjp(attention, q, k, v)
        return out, pullback(out)

    exported = jax.export.export(jax.jit(train), platforms=("cuda", "tpu"))(spec, spec, spec, ids, valid)
    assert exported.platforms == ("cuda", "tpu")
    assert exported.out_avals[0].shape == (rows, HEADS, HEAD_DIM)
