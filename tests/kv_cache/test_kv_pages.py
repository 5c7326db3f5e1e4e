"""`write_kv_to_pages` against a numpy scatter, exactly; padding writes are dropped."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.kv_cache import KVPages, init_kv_pages, kv_pages_bytes, write_kv_to_pages


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_write_matches_numpy_scatter(dtype):
    num_kv_heads, num_pages, page_size, head_dim = 3, 7, 4, 5
    rng = np.random.default_rng(0)
    shape = (num_kv_heads, num_pages, page_size, head_dim)
    k_pages = np.full(shape, np.nan, np.float32)
    v_pages = rng.standard_normal(shape).astype(np.float32)
    slots = np.array([9, 10, -1, 27, 4, -1], np.int32)  # -1: padding tokens
    k = rng.standard_normal((6, num_kv_heads, head_dim)).astype(np.float32)
    v = rng.standard_normal((6, num_kv_heads, head_dim)).astype(np.float32)
    pages = KVPages(jnp.asarray(k_pages, dtype), jnp.asarray(v_pages, dtype))
    new = write_kv_to_pages(pages, jnp.asarray(k, dtype), jnp.asarray(v, dtype), jnp.asarray(slots))
    want_k = np.asarray(jnp.asarray(k_pages, dtype)).copy()
    want_v = np.asarray(jnp.asarray(v_pages, dtype)).copy()
    for t, slot in enumerate(slots):
        if slot >= 0:
            want_k[:, slot // page_size, slot % page_size] = np.asarray(jnp.asarray(k[t], dtype))
            want_v[:, slot // page_size, slot % page_size] = np.asarray(jnp.asarray(v[t], dtype))
    # Compared as float32 (exact for bf16); NaN == NaN here: untouched slots must stay NaN.
    np.testing.assert_array_equal(np.asarray(new.k, np.float32), want_k.astype(np.float32))
    np.testing.assert_array_equal(np.asarray(new.v, np.float32), want_v.astype(np.float32))
    assert np.isnan(np.asarray(new.k, np.float32)[:, 0]).all(), "padding must not write the null page"


def test_init_and_pytree():
    cache = init_kv_pages(2, num_kv_heads=2, num_pages=5, page_size=8, head_dim=16, dtype=jnp.bfloat16)
    assert len(cache) == 2 and cache[0].k.shape == (2, 5, 8, 16) and cache[0].k.dtype == jnp.bfloat16
    assert (cache[0].num_kv_heads, cache[0].num_pages, cache[0].page_size, cache[0].head_dim) == (2, 5, 8, 16)
    assert len(jax.tree.leaves(cache)) == 4
    assert kv_pages_bytes(2, 8, 16, jnp.bfloat16) == 2 * 2 * 8 * 16 * 2
