"""With MMJAX_SHAPE_CHECKS=1 (tests/conftest.py), a wrong shape fails where the annotations say it must."""

from __future__ import annotations

import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
from jaxtyping import TypeCheckError

from mmjax import shape_checks
from mmjax.attention import paged_attention, write_and_attend
from mmjax.engine.sampler import SamplingTensors, SeenTokens, apply_penalties
from mmjax.engine.sampling_params import SamplingParams
from mmjax.kernels_pallas import ragged_paged_attention, ragged_paged_attention_reference, ragged_paged_attention_tiled
from mmjax.kv_cache import build_attention_metadata, init_kv_pages, write_kv_to_pages
from mmjax.models import dense_causal_attention
from mmjax.models.common.rotary import apply_rope
from mmjax.models.llava import merge_image_features
from mmjax.models.llava_next import merge_anyres_features

CHECKED = [paged_attention, write_and_attend, ragged_paged_attention, ragged_paged_attention_reference,
           ragged_paged_attention_tiled, write_kv_to_pages, dense_causal_attention, apply_rope,
           merge_image_features, merge_anyres_features, apply_penalties]


def _wrappers(fn):
    """``fn``, the function it wraps (``jax.jit``'s, the checks'), and so on down to the raw function."""
    chain = [fn]
    while hasattr(chain[-1], "__wrapped__"):
        chain.append(chain[-1].__wrapped__)
    return chain


def test_the_checks_are_on():
    assert shape_checks.SHAPE_CHECKS
    for fn in CHECKED:
        *wrappers, raw = _wrappers(fn)
        assert not getattr(raw, "__mmjax_shape_checked__", False), fn
        assert any(getattr(w, "__mmjax_shape_checked__", False) for w in wrappers), fn


def test_off_by_default_and_beartype_not_needed():
    code = ("import sys, mmjax.shape_checks as t, mmjax.kv_cache as kv\n"
            "f = lambda x: x\n"
            "assert not t.SHAPE_CHECKS and t.shape_checked(f) is f\n"
            "assert not hasattr(kv.write_kv_to_pages.__wrapped__, '__mmjax_shape_checked__')\n"
            "assert 'beartype' not in sys.modules\n")
    env = {k: v for k, v in os.environ.items() if k != "MMJAX_SHAPE_CHECKS"}
    subprocess.run([sys.executable, "-c", code], env=env, check=True)


def _pages(num_kv_heads=2, head_dim=8):
    (pages,) = init_kv_pages(1, num_kv_heads, num_pages=4, page_size=4, head_dim=head_dim, dtype=jnp.float32)
    return pages


def test_write_kv_to_pages_checks_kv_heads_against_the_pages():
    pages, slots = _pages(num_kv_heads=2), jnp.arange(3, dtype=jnp.int32)
    k = jnp.ones((3, 2, 8), jnp.float32)
    new = write_kv_to_pages(pages, k, k, slots)  # right: passes
    assert new.k.shape == pages.k.shape
    one_head = jnp.ones((3, 1, 8), jnp.float32)  # would broadcast into both heads unchecked
    with pytest.raises(TypeCheckError, match=r"pages\.k"):
        write_kv_to_pages(pages, one_head, one_head, slots)
    with pytest.raises(TypeCheckError):
        write_kv_to_pages(pages, k, k, jnp.arange(4, dtype=jnp.int32))  # T of k != T of the slots
    with pytest.raises(TypeCheckError):
        write_kv_to_pages(pages, k, k, jnp.arange(3, dtype=jnp.float32))  # slots must be ints


def test_dense_causal_attention_checks_head_dims():
    q = jnp.ones((1, 5, 4, 8), jnp.float32)
    kv = jnp.ones((1, 5, 2, 8), jnp.float32)
    positions = jnp.arange(5, dtype=jnp.int32)[None]
    assert dense_causal_attention(q, kv, kv, positions).shape == q.shape  # right: passes
    with pytest.raises(TypeCheckError):
        dense_causal_attention(q, jnp.ones((1, 5, 2, 16), jnp.float32), kv, positions)
    with pytest.raises(TypeCheckError):
        dense_causal_attention(q, kv, kv, positions.astype(jnp.float32))


def test_paged_attention_checks_the_metadata_tokens_against_q():
    pages = _pages(num_kv_heads=2)
    md = build_attention_metadata([[1, 2]], [6], [6], page_size=4)  # T bucketed to 8
    q = jnp.ones((md.num_tokens, 4, 8), jnp.float32)
    k = jnp.ones((md.num_tokens, 2, 8), jnp.float32)
    out, _ = write_and_attend(q, k, k, pages, md)  # right (numpy metadata from the host): passes
    assert out.shape == q.shape
    with pytest.raises(TypeCheckError, match=r"metadata\.slot_mapping"):
        paged_attention(q[:4], pages, md)


def test_numpy_where_a_device_array_is_annotated_is_refused():
    with pytest.raises(TypeCheckError):
        dense_causal_attention(np.ones((1, 5, 4, 8), np.float32), jnp.ones((1, 5, 2, 8)), jnp.ones((1, 5, 2, 8)),
                               jnp.arange(5)[None])


def test_apply_penalties_checks_the_seen_tokens_against_the_logits():
    params = [SamplingParams(repetition_penalty=1.5)] * 2
    tensors = SamplingTensors.build(params, [0, 1], [0, 0], pad_to=2)  # host arrays: accepted
    logits = jnp.zeros((2, 8), jnp.float32)
    seen = SeenTokens.build([[1], [2]], [[3], [4]], [0, 1], vocab_size=8, pad_to=2)
    assert apply_penalties(logits, tensors, seen).shape == (2, 8)  # right: passes
    narrow = SeenTokens.build([[1], [2]], [[3], [4]], [0, 1], vocab_size=7, pad_to=2)
    with pytest.raises(TypeCheckError, match=r"seen\.output_counts"):
        apply_penalties(logits, tensors, narrow)
    with pytest.raises(TypeCheckError, match=r"tensors\.temperature"):
        apply_penalties(logits, SamplingTensors.build(params * 2, [0] * 4, [0] * 4, pad_to=4), seen)
