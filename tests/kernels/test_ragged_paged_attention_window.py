"""Sliding windows and bidirectional spans (``key_start`` / ``key_end``) on every paged-attention path.

Each path is compared with ``paged_cases.dense_attention``, a float64 numpy attention masked with the
keys ``[key_start, key_end)`` computed from the formula in ``paged_cases.key_bounds`` (not by mmjax).
Except for the jnp reference (an oracle that reads every key of a sequence), the pages that lie wholly
outside every query's keys of their sequence are NaN (``poison_outside``): a path that read a block
before a window, rather than skipping it, would return NaN.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental.pallas import tpu as pltpu

from mmjax.kernels_cpu import ragged_paged_attention_cpu
from mmjax.kernels_pallas import (
    ragged_paged_attention,
    ragged_paged_attention_reference,
    ragged_paged_attention_tiled,
)
from paged_cases import dense_attention, key_bounds, make_case, poison_outside

# (seqs [(kv_len, q_len)], K, group, H, page size, window, spans per sequence)
CASES = {
    # decode steps; windows of 5 cut 16-token pages in the middle; contexts shorter than the window too
    "decode-window5": ([(40, 1), (7, 1), (100, 1), (16, 1), (17, 1)], 2, 2, 32, 16, 5, None),
    # chunk starting mid-context (60 of 90 cached), a whole prompt, a decode; window 23, GQA 4
    "chunked-window23": ([(90, 30), (50, 50), (33, 1)], 1, 4, 32, 16, 23, None),
    # causal layers: spans crossing 8-token pages, one inside a chunk that starts mid-context
    "spans-causal": ([(60, 60), (80, 40)], 2, 2, 32, 8, None, [[(10, 30)], [(45, 70)]]),
    # a 100-token span, longer than any query tile (and the CPU kernel's 64), in a window of 23
    "long-span-window23": ([(150, 150), (20, 1)], 1, 2, 32, 16, 23, [[(20, 120)], []]),
    # windows larger than every context
    "window-past-context": ([(10, 10), (5, 1), (30, 7)], 2, 1, 16, 4, 64, [[(2, 6)], [], []]),
    # mixed batch, GQA 3, a window of 5 inside spans (an image token sees [p - 4, span end))
    "mixed-gqa3": ([(70, 20), (9, 9), (45, 1)], 2, 3, 32, 16, 5, [[(55, 66)], [(0, 4)], []]),
}
IDS = list(CASES)


def windowed_case(name: str, *, poison: bool = True):
    """(case, key_start, key_end); with `poison`, NaN in the pages no query may read."""
    seqs, num_kv_heads, group, head_dim, page_size, window, spans = CASES[name]
    rng = np.random.default_rng(sum(kv for kv, _ in seqs) + head_dim + group)
    case = make_case(rng, seqs, num_kv_heads=num_kv_heads, group=group, head_dim=head_dim, page_size=page_size,
                     spans=spans)
    key_start, key_end = key_bounds(case, window)
    if poison:
        poison_outside(case, key_start, key_end)
    return case, key_start, key_end


def assert_matches(case, key_start, key_end, out, *, tol=2e-5):
    total = sum(case.q_lens)
    out = np.asarray(out, np.float32)
    assert np.isfinite(out).all(), "read a page outside every query's keys (NaN)"
    want = dense_attention(case, key_start=key_start, key_end=key_end)
    np.testing.assert_allclose(out[:total], want[:total], rtol=tol, atol=tol)
    assert not np.any(out[total:]), "padding tokens must come out as zeros"


def bounds(key_start, key_end):
    return dict(key_start=jnp.asarray(key_start), key_end=jnp.asarray(key_end))


def test_the_cases_exercise_windows_and_spans():
    """The float64 reference's bounds are what the cases claim: windows cut, spans reach past p + 1."""
    case, key_start, key_end = windowed_case("long-span-window23", poison=False)
    positions = case.positions(0)
    assert key_start[positions.tolist().index(100)] == 78  # 100 - 23 + 1
    assert key_end[positions.tolist().index(20)] == 120 and key_end[positions.tolist().index(120)] == 121
    assert key_start[150] == 0 and key_end[150] == 20  # the decode: window past its context
    assert np.array_equal(key_end[: case.metadata.num_tokens], np.asarray(case.metadata.key_ends))


@pytest.mark.parametrize("name", IDS)
def test_reference(name):
    case, key_start, key_end = windowed_case(name, poison=False)
    out = ragged_paged_attention_reference(*case.args(), **bounds(key_start, key_end),
                                           max_q_len=case.metadata.max_q_len)
    assert_matches(case, key_start, key_end, out)


#: Each case with one of the tile sizes in turn (one-token tiles, small tiles, big tiles), the long span with all.
TILED_SAMPLES = sorted({(name, *[(1, 1), (4, 2), (16, 64)][i % 3]) for i, name in enumerate(IDS)}
                       | {("long-span-window23", q, p) for q, p in [(1, 1), (4, 2), (16, 64)]})


@pytest.mark.parametrize("name,block_q,block_pages", TILED_SAMPLES)
def test_tiled(name, block_q, block_pages):
    case, key_start, key_end = windowed_case(name)
    out = ragged_paged_attention_tiled(*case.args(), **bounds(key_start, key_end), block_q=block_q,
                                       block_kv=block_pages * case.page_size)
    assert_matches(case, key_start, key_end, out)


@pytest.mark.parametrize("name", IDS)
def test_cpu_kernel_float32(name):
    case, key_start, key_end = windowed_case(name)
    assert_matches(case, key_start, key_end, ragged_paged_attention_cpu(*case.args(), **bounds(key_start, key_end)))


@pytest.mark.parametrize("name", ["chunked-window23", "long-span-window23", "mixed-gqa3"])
def test_cpu_kernel_bfloat16(name):
    case, key_start, key_end = windowed_case(name)
    for field in ("q", "k_pages", "v_pages"):  # the reference sees exactly the bf16 values the kernel does
        setattr(case, field, np.asarray(jnp.asarray(getattr(case, field), jnp.bfloat16).astype(jnp.float32)))
    case.keys = [np.asarray(jnp.asarray(x, jnp.bfloat16).astype(jnp.float32)) for x in case.keys]
    case.values = [np.asarray(jnp.asarray(x, jnp.bfloat16).astype(jnp.float32)) for x in case.values]
    out = ragged_paged_attention_cpu(*case.args(jnp.bfloat16), **bounds(key_start, key_end))
    assert out.dtype == jnp.bfloat16
    assert_matches(case, key_start, key_end, out.astype(jnp.float32), tol=1e-2)  # bf16 output rounding


# Interpreted Pallas kernels are slow on CPU, so the (case, backend, block sizes) grid is sampled: every case on
# one kernel, each kernel with small tiles (a span longer than a tile, several tiles per sequence) and its
# defaults, and the 100-token span on both.
KERNEL_SAMPLES = [
    ("decode-window5", "gpu", 4, 2), ("chunked-window23", "tpu", 8, 2), ("spans-causal", "gpu", None, None),
    ("long-span-window23", "tpu", None, None), ("long-span-window23", "gpu", 4, 2),
    ("window-past-context", "gpu", None, None), ("mixed-gqa3", "tpu", 8, 2),
]


@pytest.mark.parametrize("name,backend,block_q,pages_per_block", KERNEL_SAMPLES)
def test_pallas_kernel_interpret(name, backend, block_q, pages_per_block):
    case, key_start, key_end = windowed_case(name)
    out = ragged_paged_attention(*case.args(), **bounds(key_start, key_end), backend=backend, interpret=True,
                                 block_q=block_q, pages_per_block=pages_per_block)
    assert_matches(case, key_start, key_end, out)


def test_pallas_kernels_bfloat16_and_decode_tiles():
    case, key_start, key_end = windowed_case("decode-window5")
    for backend in ("gpu", "tpu"):
        out = ragged_paged_attention(*case.args(), **bounds(key_start, key_end), backend=backend, interpret=True,
                                     max_q_len=1)
        assert_matches(case, key_start, key_end, out)
    case, key_start, key_end = windowed_case("chunked-window23")
    out = ragged_paged_attention(*case.args(jnp.bfloat16), **bounds(key_start, key_end), backend="gpu",
                                 interpret=True, block_q=4, pages_per_block=2)
    assert out.dtype == jnp.bfloat16
    assert_matches(case, key_start, key_end, out.astype(jnp.float32), tol=3e-2)  # p is rounded to bf16 before p @ v


def test_tpu_kernel_under_tpu_interpret_params():
    """The TPU interpreter simulates VMEM/SMEM (the row bounds' VMEM blocks) and shuffles parallel grid axes."""
    case, key_start, key_end = windowed_case("mixed-gqa3")
    out = ragged_paged_attention(*case.args(), **bounds(key_start, key_end), backend="tpu",
                                 interpret=pltpu.InterpretParams(random_seed=3), block_q=8, pages_per_block=2)
    assert_matches(case, key_start, key_end, out)


# ---- blocks outside the keys are skipped, not masked ------------------------------------------------------

def skipping_case():
    """Decodes over long contexts with a window of 5, a chunk whose keys end well before its sequence's
    (arbitrary intervals: the contract is any [key_start, key_end)), so whole pages lie before every
    window and after every key end; returns (case, key_start, key_end, how many pages were poisoned)."""
    rng = np.random.default_rng(11)
    case = make_case(rng, [(200, 1), (130, 1), (96, 12)], num_kv_heads=2, group=2, head_dim=32, page_size=8)
    key_start, key_end = key_bounds(case, window=5)
    key_start[2:14], key_end[2:14] = np.arange(30, 42), np.arange(40, 52)  # sequence 2 sees [30 + i, 40 + i)
    return case, key_start, key_end, poison_outside(case, key_start, key_end)


SKIPPING_PATHS = {
    "cpu": lambda args, b: ragged_paged_attention_cpu(*args, **b),
    "xla-decode": lambda args, b: ragged_paged_attention_tiled(*args, **b, block_q=1, block_kv=16),
    "xla-prefill": lambda args, b: ragged_paged_attention_tiled(*args, **b, block_q=4, block_kv=32),
    "gpu": lambda args, b: ragged_paged_attention(*args, **b, backend="gpu", interpret=True, block_q=4,
                                                  pages_per_block=4),
    "tpu": lambda args, b: ragged_paged_attention(*args, **b, backend="tpu", interpret=True, block_q=4,
                                                  pages_per_block=4),
}


@pytest.mark.parametrize("path", list(SKIPPING_PATHS))
def test_pages_outside_the_keys_are_skipped(path):
    case, key_start, key_end, poisoned = skipping_case()
    assert poisoned >= 30, "the case must put whole pages outside every query's keys"
    assert_matches(case, key_start, key_end, SKIPPING_PATHS[path](case.args(), bounds(key_start, key_end)))


# ---- bounds that are not windows: empty, negative, past the context ----------------------------------------

def test_arbitrary_bounds_are_clamped_and_empty_ones_give_zeros():
    rng = np.random.default_rng(12)
    case = make_case(rng, [(40, 9), (20, 1), (33, 33)], num_kv_heads=1, group=2, head_dim=16, page_size=4)
    num_tokens = case.metadata.num_tokens
    key_start = rng.integers(-10, 45, num_tokens).astype(np.int32)
    key_end = (key_start + rng.integers(-5, 30, num_tokens)).astype(np.int32)
    key_end[3], key_start[10] = 10**6, -(10**6)  # far past the context, far before it
    key_start[5], key_end[5] = 20, 20  # empty: zeros
    want = dense_attention(case, key_start=key_start, key_end=key_end)  # its keys stop at kv_len by construction
    assert np.sum(~np.any(want[:43], axis=(1, 2))) >= 3, "some tokens must see no key"
    args, b = case.args(), bounds(key_start, key_end)
    outs = {
        "reference": ragged_paged_attention_reference(*args, **b),
        "xla": ragged_paged_attention_tiled(*args, **b, block_q=4, block_kv=8),
        "cpu": ragged_paged_attention_cpu(*args, **b),
        "gpu": ragged_paged_attention(*args, **b, backend="gpu", interpret=True, block_q=4, pages_per_block=2),
        "tpu": ragged_paged_attention(*args, **b, backend="tpu", interpret=True, block_q=4, pages_per_block=2),
    }
    for name, out in outs.items():
        out = np.asarray(out)
        assert np.isfinite(out).all(), name
        np.testing.assert_allclose(out[:43], want[:43], rtol=2e-5, atol=2e-5, err_msg=name)
        assert not np.any(out[5]) and not np.any(out[43:]), name
