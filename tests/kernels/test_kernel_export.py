"""Both kernels lower for their accelerators from this CPU machine (no device needed)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import pytest
from jax import export

from mmjax.kernels_pallas import ragged_paged_attention

# The Triton custom call carries no compatibility guarantee, so export refuses it unless told.
TRITON_OK = [export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")]


def _abstract_args(dtype, head_dim, num_kv_heads=2, group=4, page_size=16, num_pages=37, batch=4,
                   pages_per_seq=8, num_tokens=32):
    sds = jax.ShapeDtypeStruct
    pages = sds((num_kv_heads, num_pages, page_size, head_dim), dtype)
    return (sds((num_tokens, num_kv_heads * group, head_dim), dtype), pages, pages,
            sds((batch,), jnp.int32), sds((batch, pages_per_seq), jnp.int32),
            sds((batch + 1,), jnp.int32), sds((1,), jnp.int32))


@pytest.mark.parametrize("backend,platform,marker", [("tpu", "tpu", "tpu_custom_call"),
                                                      ("gpu", "cuda", "__gpu$xla.gpu.triton")])
@pytest.mark.parametrize("dtype,head_dim", [(jnp.bfloat16, 128), (jnp.float32, 80)])
def test_kernel_lowers(backend, platform, marker, dtype, head_dim):
    fn = jax.jit(functools.partial(ragged_paged_attention, backend=backend))
    exported = export.export(fn, platforms=(platform,), disabled_checks=TRITON_OK)(
        *_abstract_args(dtype, head_dim))
    assert marker in exported.mlir_module()
    assert exported.out_avals[0].shape == (32, 8, head_dim)


@pytest.mark.parametrize("backend,platform,marker", [("tpu", "tpu", "tpu_custom_call"),
                                                      ("gpu", "cuda", "__gpu$xla.gpu.triton")])
@pytest.mark.parametrize("dtype,head_dim,group", [(jnp.bfloat16, 128, 2), (jnp.float32, 80, 5)])
def test_kernel_lowers_with_key_bounds(backend, platform, marker, dtype, head_dim, group):
    """With key_start/key_end (sliding windows, bidirectional spans), for prefill and decode tiles."""
    bound = jax.ShapeDtypeStruct((32,), jnp.int32)
    for max_q_len in (None, 1):
        fn = jax.jit(lambda *a, m=max_q_len: ragged_paged_attention(
            *a[:7], key_start=a[7], key_end=a[8], backend=backend, max_q_len=m))
        exported = export.export(fn, platforms=(platform,), disabled_checks=TRITON_OK)(
            *_abstract_args(dtype, head_dim, group=group), bound, bound)
        assert marker in exported.mlir_module()
        assert exported.out_avals[0].shape == (32, 2 * group, head_dim)


@pytest.mark.parametrize("backend,platform,marker", [("tpu", "tpu", "tpu_custom_call"),
                                                      ("gpu", "cuda", "__gpu$xla.gpu.triton")])
@pytest.mark.parametrize("group", [5, 7])  # LLaVA-NeXT-34B has 56 query heads over 8 KV heads
def test_kernel_lowers_for_non_power_of_two_groups(backend, platform, marker, group):
    fn = jax.jit(functools.partial(ragged_paged_attention, backend=backend))
    exported = export.export(fn, platforms=(platform,), disabled_checks=TRITON_OK)(
        *_abstract_args(jnp.bfloat16, 128, group=group))
    assert marker in exported.mlir_module()
