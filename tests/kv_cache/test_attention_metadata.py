"""Attention metadata: bucketed padding, slots, and its PyTree split (arrays vs static)."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from mmjax.kv_cache import AttentionMetadata, PageAllocator, bucket, build_attention_metadata


def test_bucket():
    assert [bucket(n) for n in (0, 1, 2, 3, 5, 16, 17)] == [1, 1, 2, 4, 8, 16, 32]
    assert bucket(5, [4, 8, 64]) == 8
    with pytest.raises(ValueError, match="exceeds the largest bucket 8"):
        bucket(9, [4, 8])


def test_build_from_allocator_mixed_batch():
    alloc = PageAllocator(num_pages=20, page_size=4)
    alloc.allocate("p", 7)  # prefill of 7 tokens
    alloc.allocate("d", 9)  # decode: 8 old tokens + 1 new
    tables = [alloc.block_table("p"), alloc.block_table("d")]
    md = build_attention_metadata(tables, [7, 9], [7, 1], page_size=4, seq_buckets=[4, 8],
                                  token_buckets=[10, 16])
    assert md.block_tables.shape == (4, 4) and md.kv_lens.shape == (4,)
    assert md.num_tokens == 10 and md.max_q_len == 8
    np.testing.assert_array_equal(md.cu_q_lens, [0, 7, 8, 8, 8])
    np.testing.assert_array_equal(md.kv_lens, [7, 9, 0, 0])
    np.testing.assert_array_equal(md.num_seqs, [2])
    np.testing.assert_array_equal(md.positions, [0, 1, 2, 3, 4, 5, 6, 8, 0, 0])
    want_slots = alloc.slots("p", 0, 7) + alloc.slots("d", 8, 9) + [-1, -1]
    np.testing.assert_array_equal(md.slot_mapping, want_slots)
    np.testing.assert_array_equal(md.block_tables[2:], 0)
    assert all(x.dtype == np.int32 for x in jax.tree.leaves(md))


def test_pytree_keeps_max_q_len_static():
    md = build_attention_metadata([[1]], [3], [1], page_size=4)
    leaves, treedef = jax.tree.flatten(md)
    assert len(leaves) == 7 and all(isinstance(x, np.ndarray) for x in leaves)
    traces = []

    @jax.jit
    def f(m: AttentionMetadata):
        traces.append(m.max_q_len)
        return m.kv_lens.sum() * m.max_q_len

    assert int(f(md)) == 3
    assert int(f(build_attention_metadata([[2]], [4], [1], page_size=4))) == 4
    assert traces == [1], "same buckets must not recompile"


def test_build_rejects_inconsistent_input():
    with pytest.raises(ValueError, match="need 0 <= q_len <= kv_len, got q_len=5, kv_len=3"):
        build_attention_metadata([[1]], [3], [5], page_size=4)
    with pytest.raises(ValueError, match="1 pages of 4 cannot hold 9 tokens"):
        build_attention_metadata([[1]], [9], [1], page_size=4)
    with pytest.raises(ValueError, match="one entry per sequence"):
        build_attention_metadata([[1], [2]], [3], [1], page_size=4)


def test_key_ends_are_causal_except_inside_a_bidirectional_span():
    # Sequence 0: 10 tokens, the last 6 of them this step; positions 5..7 are one image.
    # Sequence 1: decode of its 4th token, no spans.
    md = build_attention_metadata([[0, 1, 2], [3]], [10, 4], [6, 1], page_size=4,
                                  bidirectional_spans=[[(5, 8)], []], token_buckets=[8])
    np.testing.assert_array_equal(md.positions[:7], [4, 5, 6, 7, 8, 9, 3])
    np.testing.assert_array_equal(md.key_ends, [5, 8, 8, 8, 9, 10, 4, 0])


def test_a_span_past_the_cached_tokens_is_refused():
    with pytest.raises(ValueError, match=r"span \[5, 12\) ends past its 10 tokens"):
        build_attention_metadata([[0, 1, 2]], [10], [6], page_size=4, bidirectional_spans=[[(5, 12)]])
