"""The CPU kernel that writes a step's K/V rows into a 16-bit paged cache: the rows land where the slots say,
padding is dropped, and nothing converts the cache to float32 (XLA's CPU scatter did, every step)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.attention.dispatch import write_kv
from mmjax.kernels_cpu.write_kv_pages import write_kv_rows_cpu, write_kv_unavailable
from mmjax.kv_cache import KVPages, write_kv_to_pages

K, A, G, H, T = 2, 5, 4, 8, 6


def _case(dtype, seed: int = 0):
    rng = np.random.default_rng(seed)
    pages = rng.standard_normal((K, A, G, H)).astype(np.float32)
    pages[:, 0] = np.nan  # the null page: padding must never write it
    rows = rng.standard_normal((T, K, H)).astype(np.float32)  # token-major, as the projections make them
    slots = np.array([5, 19, -1, 6, 20, 4], np.int32)  # -1: padding; 20 = A * G: past the end
    return jnp.asarray(pages, dtype), jnp.asarray(rows, dtype), slots


def _expected(pages, rows, slots) -> np.ndarray:
    want = np.asarray(pages.astype(jnp.float32)).reshape(K, A * G, H).copy()
    for t, slot in enumerate(slots):
        if 0 <= slot < A * G:
            want[:, slot] = np.asarray(rows.astype(jnp.float32))[t]
    return want.reshape(K, A, G, H)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_rows_land_at_their_slots_and_padding_is_dropped(dtype):
    assert write_kv_unavailable(dtype) is None
    pages, rows, slots = _case(dtype)
    got = write_kv_rows_cpu(pages, rows, jnp.asarray(slots))
    assert got.dtype == dtype
    np.testing.assert_array_equal(np.asarray(got.astype(jnp.float32)), _expected(pages, rows, slots))
    assert np.isnan(np.asarray(got.astype(jnp.float32))[:, 0]).all()


def test_write_kv_equals_the_xla_scatter_bit_for_bit():
    pages, rows, slots = _case(jnp.bfloat16, seed=1)
    kv = KVPages(pages, pages + 1)
    k, v = rows, rows * 2  # [T, K, H]
    got = write_kv(kv, k, v, jnp.asarray(slots))
    want = write_kv_to_pages(kv, k, v, jnp.asarray(slots))
    for a, b in ((got.k, want.k), (got.v, want.v)):
        np.testing.assert_array_equal(np.asarray(a).view(np.uint16), np.asarray(b).view(np.uint16))


def test_a_donated_bfloat16_cache_is_written_without_a_float32_copy():
    pages, rows, slots = _case(jnp.bfloat16, seed=2)
    kv = KVPages(pages, pages)
    step = jax.jit(lambda kv, k, v, s: write_kv(kv, k, v, s), donate_argnums=0)
    k = rows
    hlo = step.lower(kv, k, k, jnp.asarray(slots)).compile().as_text()
    assert f"f32[{K},{A},{G},{H}]" not in hlo  # the XLA scatter converts the whole cache (and back)
    assert "transpose" not in hlo, "the kernel takes the rows token-major, as they come: no copy into [K, T, H]"
    xla = jax.jit(lambda kv, k, v, s: write_kv_to_pages(kv, k, v, s), donate_argnums=0)
    assert f"f32[{K},{A},{G},{H}]" in xla.lower(kv, k, k, jnp.asarray(slots)).compile().as_text()  # what it avoids
