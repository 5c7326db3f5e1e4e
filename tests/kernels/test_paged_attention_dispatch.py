"""`paged_attention` dispatch, and a whole decode loop through the allocator and the pages."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.attention import PagedAttend, paged_attention, resolve_impl, write_and_attend
from mmjax.kv_cache import KVPages, PageAllocator, build_attention_metadata, init_kv_pages
from paged_cases import dense_attention, key_bounds, make_case


def test_auto_is_the_native_kernel_on_cpu():
    assert resolve_impl("auto") == "cpu"
    assert resolve_impl("pallas") == "pallas" and resolve_impl("reference") == "reference"
    assert resolve_impl("xla") == "xla"
    with pytest.raises(ValueError, match="impl: expected one of"):
        resolve_impl("triton")


def test_impls_agree():
    rng = np.random.default_rng(2)
    case = make_case(rng, [(10, 3), (4, 1)], num_kv_heads=2, group=2, head_dim=16, page_size=4)
    q, k_pages, v_pages, *_ = case.args()
    pages = KVPages(k_pages, v_pages)
    auto = paged_attention(q, pages, case.metadata)  # the native CPU kernel
    reference = paged_attention(q, pages, case.metadata, impl="reference")
    xla = paged_attention(q, pages, case.metadata, impl="xla")
    pallas = paged_attention(q, pages, case.metadata, impl="pallas", backend="gpu")
    np.testing.assert_allclose(np.asarray(auto[:4]), dense_attention(case)[:4], rtol=2e-5, atol=2e-5)
    for other in (reference, xla, pallas):
        np.testing.assert_allclose(np.asarray(other), np.asarray(auto), rtol=2e-5, atol=2e-5)


def test_chunked_prefill_then_decode_equals_one_shot():
    """Write-then-attend step by step (allocator, metadata, scatter) = dense attention at once."""
    num_kv_heads, group, head_dim, page_size, length = 2, 2, 8, 4, 11
    rng = np.random.default_rng(4)
    q = rng.standard_normal((length, num_kv_heads * group, head_dim)).astype(np.float32)
    k = rng.standard_normal((length, num_kv_heads, head_dim)).astype(np.float32)
    v = rng.standard_normal((length, num_kv_heads, head_dim)).astype(np.float32)
    alloc = PageAllocator(num_pages=8, page_size=page_size)
    alloc.allocate("other", 5)  # another sequence's pages interleave with ours
    (pages,) = init_kv_pages(1, num_kv_heads, 8, page_size, head_dim, jnp.float32)
    step = jax.jit(write_and_attend, donate_argnums=(3,))
    outs, done = [], 0
    for chunk in (6, 3, 1, 1):  # chunked prefill, then decode
        alloc.append_slots("seq", chunk) if "seq" in alloc else alloc.allocate("seq", chunk)
        md = build_attention_metadata([alloc.block_table("seq")], [done + chunk], [chunk], page_size=page_size)
        t = slice(done, done + chunk)
        pad = md.num_tokens - chunk
        padded = [np.pad(x[t], ((0, pad), (0, 0), (0, 0))) for x in (q, k, v)]
        out, pages = step(*padded, pages, md)
        outs.append(np.asarray(out)[:chunk])
        done += chunk
    logits = np.einsum("tkrh,skh->krts", q.reshape(length, num_kv_heads, group, head_dim), k) / np.sqrt(head_dim)
    logits = np.where(np.tril(np.ones((length, length), bool)), logits, -np.inf)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    want = np.einsum("krts,skh->tkrh", p / p.sum(-1, keepdims=True), v).reshape(q.shape)
    np.testing.assert_allclose(np.concatenate(outs), want, rtol=2e-5, atol=2e-5)


# ---- sliding windows and bidirectional spans ----------------------------------------------------------------

@pytest.mark.parametrize("impl,options", [("cpu", {}), ("xla", {}), ("reference", {}),
                                          ("pallas", {"backend": "gpu"}), ("pallas", {"backend": "tpu"})])
@pytest.mark.parametrize("window", [None, 7])
def test_sliding_window_and_spans_on_every_impl(impl, options, window):
    """key_end from metadata.key_ends (spans given to build_attention_metadata), key_start from the window."""
    rng = np.random.default_rng(21)
    seqs, spans = [(50, 20), (37, 1), (12, 12)], [[(35, 47)], [(3, 20)], [(0, 5)]]  # chunk from 30; a decode
    case = make_case(rng, seqs, num_kv_heads=2, group=2, head_dim=16, page_size=8, spans=spans)
    key_start, key_end = key_bounds(case, window)
    assert key_end[5] == 47 and key_end[20] == 37, "a span token sees its span's end, a decode token p + 1"
    q, k_pages, v_pages, *_ = case.args()
    out = paged_attention(q, KVPages(k_pages, v_pages), case.metadata, sliding_window=window, impl=impl, **options)
    total = sum(case.q_lens)
    want = dense_attention(case, key_start=key_start, key_end=key_end)
    np.testing.assert_allclose(np.asarray(out[:total]), want[:total], rtol=2e-5, atol=2e-5)
    assert not np.any(np.asarray(out[total:]))


@pytest.mark.parametrize("window", [0, -3, True])
def test_bad_sliding_window(window):
    rng = np.random.default_rng(22)
    case = make_case(rng, [(10, 3)], num_kv_heads=1, group=2, head_dim=16, page_size=4)
    q, k_pages, v_pages, *_ = case.args()
    with pytest.raises(ValueError, match="sliding_window: expected a positive int or None"):
        paged_attention(q, KVPages(k_pages, v_pages), case.metadata, sliding_window=window, impl="xla")


def test_paged_attend_passes_the_layers_window_through_chunked_prefill_and_decode():
    """PagedAttend(window=...) step by step (allocator, metadata with an image span, scatter) equals a
    dense float64 attention with transformers' mask: (causal or same image) and kv > q - window."""
    num_kv_heads, group, head_dim, page_size, length, window = 2, 2, 8, 4, 14, 3
    span = (2, 9)  # an image of 7 tokens, crossing pages
    rng = np.random.default_rng(23)
    q = rng.standard_normal((length, num_kv_heads * group, head_dim)).astype(np.float32)
    k = rng.standard_normal((length, num_kv_heads, head_dim)).astype(np.float32)
    v = rng.standard_normal((length, num_kv_heads, head_dim)).astype(np.float32)
    alloc = PageAllocator(num_pages=10, page_size=page_size)
    alloc.allocate("other", 5)
    (pages,) = init_kv_pages(1, num_kv_heads, 10, page_size, head_dim, jnp.float32)
    outs, done = [], 0
    for chunk in (9, 3, 1, 1):  # the first chunk holds the whole image, as the metadata requires
        alloc.append_slots("seq", chunk) if "seq" in alloc else alloc.allocate("seq", chunk)
        md = build_attention_metadata([alloc.block_table("seq")], [done + chunk], [chunk], page_size=page_size,
                                      bidirectional_spans=[[span]])
        t = slice(done, done + chunk)
        pad = md.num_tokens - chunk
        md = jax.tree.map(lambda x: x[None], md)  # the replica axis R = 1
        padded = [jnp.asarray(np.pad(x[t], ((0, pad), (0, 0), (0, 0)))[None]) for x in (q, k, v)]
        attend = PagedAttend(md, impl="xla")
        out, pages = attend(*padded, jnp.asarray(md.positions), pages, window=window)
        outs.append(np.asarray(out)[0, :chunk])
        done += chunk
    pos = np.arange(length)
    same_image = ((pos >= span[0]) & (pos < span[1]))[:, None] & ((pos >= span[0]) & (pos < span[1]))[None, :]
    mask = ((pos[None, :] <= pos[:, None]) | same_image) & (pos[None, :] > pos[:, None] - window)
    logits = np.einsum("tkrh,skh->krts", q.reshape(length, num_kv_heads, group, head_dim).astype(np.float64),
                       k.astype(np.float64)) / np.sqrt(head_dim)
    logits = np.where(mask, logits, -np.inf)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    want = np.einsum("krts,skh->tkrh", p / p.sum(-1, keepdims=True), v).reshape(q.shape)
    np.testing.assert_allclose(np.concatenate(outs), want, rtol=2e-5, atol=2e-5)
