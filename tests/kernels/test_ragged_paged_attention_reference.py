"""The jnp reference against an independent dense causal attention (numpy, float64)."""

from __future__ import annotations

import numpy as np
import pytest

from mmjax.kernels_pallas import ragged_paged_attention_reference
from paged_cases import dense_attention, make_case

CASES = [  # (seqs [(kv_len, q_len)], K, R, H, G)
    ([(1, 1), (7, 1), (8, 1), (9, 1)], 2, 4, 16, 8),  # decode at kv 1, G-1, G, G+1
    ([(13, 13), (29, 5), (5, 1)], 1, 8, 32, 4),  # prefill + chunked prefill + decode
    ([(17, 3), (40, 40)], 3, 1, 24, 16),  # MHA, non-power-of-two K and H
    ([(33, 2), (16, 16), (1, 1), (64, 1)], 2, 2, 64, 16),
]


@pytest.mark.parametrize("seqs,num_kv_heads,group,head_dim,page_size", CASES)
def test_reference_matches_dense(seqs, num_kv_heads, group, head_dim, page_size):
    rng = np.random.default_rng(len(seqs) * 31 + head_dim)
    case = make_case(rng, seqs, num_kv_heads=num_kv_heads, group=group, head_dim=head_dim,
                     page_size=page_size)
    out = np.asarray(ragged_paged_attention_reference(*case.args(), max_q_len=case.metadata.max_q_len))
    total = sum(q for _, q in seqs)
    np.testing.assert_allclose(out[:total], dense_attention(case)[:total], rtol=2e-5, atol=2e-5)
    assert not np.any(out[total:]), "padding tokens must come out as zeros"


def test_reference_sm_scale_and_default_max_q_len():
    rng = np.random.default_rng(5)
    case = make_case(rng, [(11, 4), (6, 1)], num_kv_heads=2, group=2, head_dim=16, page_size=4)
    out = np.asarray(ragged_paged_attention_reference(*case.args(), sm_scale=0.3))
    np.testing.assert_allclose(out[:5], dense_attention(case, sm_scale=0.3)[:5], rtol=2e-5, atol=2e-5)


def test_sequences_past_num_seqs_are_ignored():
    rng = np.random.default_rng(6)
    case = make_case(rng, [(9, 2), (5, 3)], num_kv_heads=1, group=2, head_dim=8, page_size=4)
    args = list(case.args())
    args[-1] = args[-1] - 1  # only the first sequence is live
    out = np.asarray(ragged_paged_attention_reference(*args))
    np.testing.assert_allclose(out[:2], dense_attention(case)[:2], rtol=2e-5, atol=2e-5)
    assert not np.any(out[2:])
