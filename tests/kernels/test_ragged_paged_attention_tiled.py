"""The tiled XLA path (the CPU path) against the independent dense attention, NaN-filled unused slots.

``block_kv`` of one or two pages makes the loop over K/V blocks run several
trips (and stop at each step's real context); 256 reads a case in one block.
"""

from __future__ import annotations

import numpy as np
import pytest

from mmjax.kernels_pallas.ragged_paged_attention_tiled import ragged_paged_attention_tiled
from paged_cases import dense_attention, make_case
from test_ragged_paged_attention_reference import CASES


@pytest.mark.parametrize("block_q,block_pages", [(1, 1), (4, 2), (16, 1), (16, 64)])
@pytest.mark.parametrize("seqs,num_kv_heads,group,head_dim,page_size", CASES)
def test_tiled_matches_dense(seqs, num_kv_heads, group, head_dim, page_size, block_q, block_pages):
    rng = np.random.default_rng(len(seqs) * 17 + head_dim + block_q)
    case = make_case(rng, seqs, num_kv_heads=num_kv_heads, group=group, head_dim=head_dim, page_size=page_size)
    out = np.asarray(ragged_paged_attention_tiled(*case.args(), block_q=block_q, block_kv=block_pages * page_size))
    total = sum(q for _, q in seqs)
    assert np.isfinite(out).all(), "read an unused (NaN) slot"
    np.testing.assert_allclose(out[:total], dense_attention(case)[:total], rtol=2e-5, atol=2e-5)
    assert not np.any(out[total:]), "padding tokens must come out as zeros"


def test_wide_block_tables_with_short_contexts():
    """An engine's block tables are ``max_model_len`` wide: 128 null-padded pages here, contexts of
    at most 21 tokens. The loop reads only the blocks up to the real context, and gets them right."""
    rng = np.random.default_rng(5)
    seqs = [(21, 1), (3, 1), (12, 12)]
    case = make_case(rng, seqs, num_kv_heads=2, group=2, head_dim=16, page_size=4, page_buckets=[128])
    assert case.metadata.block_tables.shape[1] == 128
    for block_q in (1, 8):
        out = np.asarray(ragged_paged_attention_tiled(*case.args(), block_q=block_q, block_kv=8))
        np.testing.assert_allclose(out[:14], dense_attention(case)[:14], rtol=2e-5, atol=2e-5)
