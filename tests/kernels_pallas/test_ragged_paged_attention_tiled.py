"""The tiled XLA path (CPU prefill) against the independent dense attention, NaN-filled unused slots."""

from __future__ import annotations

import numpy as np
import pytest

from mmjax.kernels_pallas.ragged_paged_attention_tiled import ragged_paged_attention_tiled
from paged_cases import dense_attention, make_case
from test_ragged_paged_attention_reference import CASES


@pytest.mark.parametrize("block_q", [4, 16])
@pytest.mark.parametrize("seqs,num_kv_heads,group,head_dim,page_size", CASES)
def test_tiled_matches_dense(seqs, num_kv_heads, group, head_dim, page_size, block_q):
    rng = np.random.default_rng(len(seqs) * 17 + head_dim + block_q)
    case = make_case(rng, seqs, num_kv_heads=num_kv_heads, group=group, head_dim=head_dim, page_size=page_size)
    out = np.asarray(ragged_paged_attention_tiled(*case.args(), block_q=block_q))
    total = sum(q for _, q in seqs)
    assert np.isfinite(out).all(), "read an unused (NaN) slot"
    np.testing.assert_allclose(out[:total], dense_attention(case)[:total], rtol=2e-5, atol=2e-5)
    assert not np.any(out[total:]), "padding tokens must come out as zeros"
