"""The wrappers reject bad inputs with a ValueError that names the argument."""

from __future__ import annotations

import jax.numpy as jnp
import pytest

from mmjax.kernels_cpu import ragged_paged_attention_cpu
from mmjax.kernels_pallas import ragged_paged_attention, ragged_paged_attention_reference


def _args(**over):
    args = dict(
        q=jnp.zeros((8, 4, 16), jnp.float32),
        k_pages=jnp.zeros((2, 6, 4, 16), jnp.float32),
        v_pages=jnp.zeros((2, 6, 4, 16), jnp.float32),
        kv_lens=jnp.zeros((3,), jnp.int32),
        block_tables=jnp.zeros((3, 2), jnp.int32),
        cu_q_lens=jnp.zeros((4,), jnp.int32),
        num_seqs=jnp.zeros((1,), jnp.int32),
    )
    args.update(over)
    return args


BAD = [
    (dict(q=jnp.zeros((8, 64))), r"q: expected 3 dims \[T, N, H\], got \(8, 64\)"),
    (dict(q=jnp.zeros((8, 3, 16))), r"q: expected query heads N a multiple of KV heads K=2"),
    (dict(q=jnp.zeros((8, 4, 16), jnp.int32)), r"q: expected dtype float32, bfloat16 or float16"),
    (dict(k_pages=jnp.zeros((2, 6, 4))), r"k_pages: expected 4 dims \[K, A, G, H\], got \(2, 6, 4\)"),
    (dict(k_pages=jnp.zeros((2, 6, 4, 8)), v_pages=jnp.zeros((2, 6, 4, 8))),
     r"k_pages: expected head dim H=16"),
    (dict(v_pages=jnp.zeros((2, 7, 4, 16))),
     r"v_pages: expected the shape of k_pages \(2, 6, 4, 16\), got \(2, 7, 4, 16\)"),
    (dict(v_pages=jnp.zeros((2, 6, 4, 16), jnp.bfloat16)), r"v_pages: expected dtype float32"),
    (dict(kv_lens=jnp.zeros((4,), jnp.int32)), r"kv_lens: expected shape \(3,\) \(B=3 from block_tables\), got \(4,\)"),
    (dict(cu_q_lens=jnp.zeros((3,), jnp.int32)), r"cu_q_lens: expected shape \(4,\)"),
    (dict(num_seqs=jnp.zeros((), jnp.int32)), r"num_seqs: expected shape \(1,\)"),
    (dict(block_tables=jnp.zeros((3, 2), jnp.float32)), r"block_tables: expected dtype int32"),
    (dict(block_tables=jnp.zeros((6,), jnp.int32)), r"block_tables: expected 2 dims \[B, P\]"),
    (dict(key_start=jnp.zeros((7,), jnp.int32)), r"key_start: expected shape \(8,\) \(T=8 from q\), got \(7,\)"),
    (dict(key_end=jnp.zeros((8, 1), jnp.int32)), r"key_end: expected shape \(8,\) \(T=8 from q\), got \(8, 1\)"),
    (dict(key_start=jnp.zeros((8,), jnp.float32)), r"key_start: expected dtype int32, got float32"),
    (dict(key_end=jnp.zeros((8,), jnp.int16)), r"key_end: expected dtype int32, got int16"),
]


@pytest.mark.parametrize("fn", [ragged_paged_attention_reference, ragged_paged_attention])
@pytest.mark.parametrize("over,message", BAD)
def test_bad_inputs_are_named(fn, over, message):
    with pytest.raises(ValueError, match=message):
        fn(**_args(**over), interpret=True) if fn is ragged_paged_attention else fn(**_args(**over))


def test_bad_kernel_options():
    with pytest.raises(ValueError, match="backend: expected one of"):
        ragged_paged_attention(**_args(), backend="rocm", interpret=True)
    with pytest.raises(ValueError, match="pages_per_block: expected a positive int"):
        ragged_paged_attention(**_args(), pages_per_block=-1, interpret=True)
    with pytest.raises(ValueError, match="GPU kernel needs powers of two"):
        ragged_paged_attention(**_args(), backend="gpu", block_q=3, interpret=True)


def test_no_kernel_on_cpu_without_interpret():
    with pytest.raises(ValueError, match="backend: no Pallas kernel for platform 'cpu'"):
        ragged_paged_attention(**_args())


@pytest.mark.parametrize("over,message", BAD[-4:])
def test_bad_key_bounds_are_named_by_the_cpu_kernel(over, message):
    with pytest.raises(ValueError, match=message):
        ragged_paged_attention_cpu(**_args(**over))
