"""GPU (Triton) and TPU (Mosaic) kernels against the reference, in interpret mode on CPU.

A sampled sweep, not a full product: each row mixes decode and prefill
sequences, kv lengths around the page size, a GQA ratio, a page size and a
head dim, so every value of each axis appears at least once per backend.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental.pallas import tpu as pltpu

from mmjax.kernels_pallas import ragged_paged_attention, ragged_paged_attention_reference
from paged_cases import make_case

# (seqs [(kv_len, q_len)], K, R, H, G, block_q, pages_per_block); None = backend default.
SWEEP = [
    ([(1, 1), (7, 1), (8, 1), (9, 1)], 2, 4, 64, 8, None, None),  # decode batch at 1, G-1, G, G+1
    ([(9, 9), (23, 5), (1, 1), (40, 1)], 1, 8, 80, 8, 4, 2),  # prefill, chunk, decodes; multi-tile
    ([(16, 16), (17, 3), (15, 1)], 4, 1, 16, 16, 2, 1),  # MHA, many tiles per sequence
    ([(47, 12), (8, 1), (31, 31)], 2, 2, 96, 4, 8, 4),  # GQA 2; pages_per_block overshoots P
    ([(70, 1), (3, 3), (2, 1)], 1, 4, 128, 16, None, 2),  # longer context, empty padded tokens
]
BACKENDS = ["gpu", "tpu"]


def _check(backend, row, dtype, interpret=True, sm_scale=None, tol=2e-5):
    seqs, num_kv_heads, group, head_dim, page_size, block_q, pages_per_block = row
    rng = np.random.default_rng(sum(kv for kv, _ in seqs) + head_dim)
    case = make_case(rng, seqs, num_kv_heads=num_kv_heads, group=group, head_dim=head_dim,
                     page_size=page_size)
    args = case.args(dtype)
    want = ragged_paged_attention_reference(*args, sm_scale=sm_scale, max_q_len=case.metadata.max_q_len)
    got = ragged_paged_attention(*args, backend=backend, interpret=interpret, sm_scale=sm_scale,
                                 block_q=block_q, pages_per_block=pages_per_block)
    assert got.dtype == dtype
    got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
    assert not np.isnan(got).any(), "the kernel read a slot outside its sequences"
    total = sum(q for _, q in seqs)
    np.testing.assert_allclose(got[:total], want[:total], rtol=tol, atol=tol)
    assert not np.any(got[total:]), "padding tokens must come out as zeros"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("row", SWEEP, ids=[f"case{i}" for i in range(len(SWEEP))])
def test_kernel_matches_reference_float32(backend, row):
    _check(backend, row, jnp.float32)


@pytest.mark.parametrize("backend,row", [("gpu", SWEEP[1]), ("tpu", SWEEP[3])])
def test_kernel_matches_reference_bfloat16(backend, row):
    _check(backend, row, jnp.bfloat16, tol=3e-2)  # p is rounded to bf16 before p @ v


@pytest.mark.parametrize("backend", BACKENDS)
def test_kernel_sm_scale(backend):
    _check(backend, SWEEP[0], jnp.float32, sm_scale=0.25)


def test_tpu_kernel_under_tpu_interpret_params():
    """The TPU interpreter simulates VMEM/SMEM and shuffles the parallel grid axes."""
    _check("tpu", SWEEP[1], jnp.float32, interpret=pltpu.InterpretParams(random_seed=3))


def test_decode_uses_one_token_tiles():
    rng = np.random.default_rng(9)
    case = make_case(rng, [(5, 1), (12, 1), (3, 1)], num_kv_heads=2, group=2, head_dim=16, page_size=4)
    args = case.args()
    want = np.asarray(ragged_paged_attention_reference(*args, max_q_len=1))
    got = np.asarray(ragged_paged_attention(*args, backend="gpu", interpret=True, max_q_len=1))
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)
