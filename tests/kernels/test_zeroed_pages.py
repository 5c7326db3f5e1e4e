"""The CPU kernel that makes a new KV cache: every array reads as zeros (even in memory the heap held
non-zero data in before), each is a buffer of its own that a step can donate and write, and a large
cache's memory stays unresident until it is touched."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.kernels_cpu.zeroed_pages import zeroed_arrays, zeroed_unavailable
from mmjax.kv_cache import init_kv_pages


def _resident_bytes() -> int:
    """This process' resident memory (Linux: /proc/self/statm, in pages)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


@pytest.mark.parametrize(("shape", "dtype"), [
    ((3, 1000, 7), jnp.float32),        # under 1 MiB: zeroed with memset
    ((5, 262147), jnp.float32),         # 5 MiB, its ends not on page boundaries
    ((2, 300, 16, 64), jnp.bfloat16),   # a KV-pages shape in a 16-bit dtype
    ((1, 1 << 20), jnp.int8),
])
def test_arrays_are_zero_even_where_the_heap_held_other_data(shape, dtype):
    assert zeroed_unavailable() is None
    dirty = [jnp.full(shape, jnp.nan if jnp.issubdtype(dtype, jnp.floating) else 7, dtype) for _ in range(4)]
    jax.block_until_ready(dirty)
    del dirty  # freed: the allocator may hand this memory to the zeroed arrays
    arrays = zeroed_arrays(shape, dtype, 3)
    assert len(arrays) == 3
    assert len({a.unsafe_buffer_pointer() for a in arrays}) == 3  # three buffers, not one aliased
    for a in arrays:
        assert a.shape == shape and a.dtype == dtype
        np.testing.assert_array_equal(np.asarray(a), np.zeros(shape, dtype))


def test_a_step_donates_and_writes_the_zeroed_pages():
    shape = (2, 64, 16, 64)  # 512 KiB of float32
    pages = zeroed_arrays(shape, jnp.float32, 2)

    @functools.partial(jax.jit, donate_argnums=0)
    def write(pages, rows):
        return tuple(p.at[:, 3].set(r) for p, r in zip(pages, rows))

    rows = np.arange(2 * 2 * 16 * 64, dtype=np.float32).reshape(2, 2, 16, 64)
    got = write(pages, jnp.asarray(rows))
    assert all(p.is_deleted() for p in pages)
    for p, r in zip(got, rows):
        want = np.zeros(shape, np.float32)
        want[:, 3] = r
        np.testing.assert_array_equal(np.asarray(p), want)


def test_a_new_kv_cache_is_zero_and_not_resident_until_used():
    num_layers, shape = 4, (8, 512, 16, 64)  # 8 arrays of 16 MiB: 128 MiB
    cache_bytes = 2 * num_layers * int(np.prod(shape)) * 4
    before = _resident_bytes()
    pages = init_kv_pages(num_layers, shape[0], shape[1], shape[2], shape[3], jnp.float32)
    jax.block_until_ready(pages)
    grown = _resident_bytes() - before
    assert grown < cache_bytes // 8, f"{grown} bytes resident of a {cache_bytes}-byte cache"
    assert len(pages) == num_layers
    first = pages[0]
    assert first.k.shape == shape and first.k.dtype == jnp.float32
    # read back one page of each array: zeros (a read maps the shared zero page, nothing more)
    for layer in pages:
        for a in (layer.k, layer.v):
            np.testing.assert_array_equal(np.asarray(a[:, 7]), np.zeros((8, 16, 64), np.float32))
