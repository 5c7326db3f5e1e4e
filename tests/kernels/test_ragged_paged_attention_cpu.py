"""The native CPU kernel (``mmjax.kernels_cpu``) against the independent dense attention, and its build.

Cases as the reference's (NaN in every slot no live sequence owns), plus the
shapes the kernel's own structure has edges at: query tiles of 64 rows, key
blocks of 64 and their tails that are not whole vectors of 8 keys, the 8-row switch
between its two kinds of loops (and the 4/2/1-row passes of the few-row ones), head
dims that are not whole vectors, bfloat16 on each of those paths.
"""

from __future__ import annotations

import logging

import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.attention import paged_attention
import mmjax
import mmjax.kernels_cpu
from mmjax.kernels_cpu import KernelBuildError, build_in_background, kernel_unavailable, ragged_paged_attention_cpu
from mmjax.kernels_cpu import build as kernel_build
from mmjax.kernels_pallas.ragged_paged_attention_tiled import ragged_paged_attention_tiled
from mmjax.kv_cache import KVPages
from mmjax.testing.checkpoints import make_tiny_llava_checkpoint
from paged_cases import dense_attention, make_case
from test_ragged_paged_attention_reference import CASES

EDGE_CASES = [  # (seqs [(kv_len, q_len)], K, group, H, page size)
    ([(200, 200), (130, 65), (64, 64), (65, 1)], 2, 1, 32, 16),  # tiles of 64 + rest; blocks of 64 + rest
    ([(150, 7), (90, 2), (300, 1)], 2, 4, 32, 8),  # 28 / 8 / 4 rows: both logits loops, rows not x4
    ([(129, 129), (5, 5)], 1, 3, 32, 4),  # group 3: rows of a tile cross tokens
    ([(100, 100), (41, 3), (67, 1)], 1, 3, 20, 4),  # H 20: rows not whole vectors, converted and zero-padded
    ([(150, 1), (70, 1), (90, 30)], 1, 7, 80, 8),  # H 80 (10 vectors); 7 rows: passes of 4, 2 and 1
]
BF16_CASES = [  # the same edges in bfloat16, on each way the kernel reads bfloat16 rows
    ([(67, 1), (130, 1), (5, 1)], 2, 1, 64, 16),  # decode, one row: K/V widened as loaded; blocks of 67 % 8 keys
    ([(150, 1), (33, 1)], 2, 2, 128, 16),  # decode, 2 rows sharing each K vector
    ([(150, 1), (70, 1), (23, 1)], 1, 7, 80, 8),  # decode, 7 rows, H 80
    ([(200, 70), (9, 9), (65, 1)], 2, 1, 64, 16),  # prefill: each block converted once for the tile's rows
    ([(100, 100), (41, 3)], 1, 3, 20, 4),  # H 20: converted and zero-padded on both paths
    ([(90, 1), (60, 5)], 1, 8, 128, 16),  # 8 rows from one token: the prefill loops in a decode step
    # where the CPU has AMX, prefill's products on the tile unit (head dims of whole 32s): 16-row tiles in part,
    # key blocks whose tails are not whole tiles of 16 or chunks of 32 keys, blocks across pages of 8
    ([(300, 150), (37, 37), (50, 10)], 1, 4, 64, 8),
    ([(129, 129), (17, 17)], 2, 2, 96, 16),  # H 96: three chunks of 32; rows of a tile cross tokens
]


def assert_matches_dense(case, out, *, tol=2e-5):
    total = sum(case.q_lens)
    assert np.isfinite(out).all(), "read an unused (NaN) slot"
    np.testing.assert_allclose(out[:total], dense_attention(case)[:total], rtol=tol, atol=tol)
    assert not np.any(out[total:]), "padding tokens must come out as zeros"


@pytest.mark.parametrize("seqs,num_kv_heads,group,head_dim,page_size", CASES + EDGE_CASES)
def test_cpu_kernel_matches_dense(seqs, num_kv_heads, group, head_dim, page_size):
    rng = np.random.default_rng(len(seqs) * 13 + head_dim + group)
    case = make_case(rng, seqs, num_kv_heads=num_kv_heads, group=group, head_dim=head_dim, page_size=page_size)
    assert_matches_dense(case, np.asarray(ragged_paged_attention_cpu(*case.args())))


def test_sm_scale_and_sequences_past_num_seqs():
    rng = np.random.default_rng(3)
    case = make_case(rng, [(40, 6), (70, 1)], num_kv_heads=2, group=2, head_dim=32, page_size=8)
    out = np.asarray(ragged_paged_attention_cpu(*case.args(), sm_scale=0.3))
    np.testing.assert_allclose(out[:7], dense_attention(case, sm_scale=0.3)[:7], rtol=2e-5, atol=2e-5)
    q, k, v, kv_lens, tables, cu, _ = case.args()
    one = np.asarray(ragged_paged_attention_cpu(q, k, v, kv_lens, tables, cu, jnp.asarray([1], jnp.int32)))
    np.testing.assert_allclose(one[:6], dense_attention(case)[:6], rtol=2e-5, atol=2e-5)
    assert not np.any(one[6:]), "a sequence past num_seqs is padding"


def rounded_to_bfloat16(case):
    """The case with q, K and V rounded to bfloat16: the reference sees exactly the values the kernel does."""
    to_bf16 = lambda x: np.asarray(jnp.asarray(x, jnp.bfloat16).astype(jnp.float32))  # noqa: E731
    for name in ("q", "k_pages", "v_pages"):
        setattr(case, name, to_bf16(getattr(case, name)))
    case.keys = [to_bf16(x) for x in case.keys]
    case.values = [to_bf16(x) for x in case.values]
    return case


def test_bfloat16_matches_dense_of_the_rounded_inputs():
    rng = np.random.default_rng(4)
    case = rounded_to_bfloat16(make_case(rng, [(100, 100), (77, 1)], num_kv_heads=2, group=2, head_dim=32,
                                         page_size=16))
    out = ragged_paged_attention_cpu(*case.args(jnp.bfloat16))
    assert out.dtype == jnp.bfloat16
    assert_matches_dense(case, np.asarray(out.astype(jnp.float32)), tol=1e-2)  # bf16 output rounding


@pytest.mark.parametrize("seqs,num_kv_heads,group,head_dim,page_size", BF16_CASES)
def test_bfloat16_paths_match_dense(seqs, num_kv_heads, group, head_dim, page_size):
    rng = np.random.default_rng(len(seqs) * 17 + head_dim + group)
    case = rounded_to_bfloat16(make_case(rng, seqs, num_kv_heads=num_kv_heads, group=group, head_dim=head_dim,
                                         page_size=page_size))
    out = ragged_paged_attention_cpu(*case.args(jnp.bfloat16))
    assert out.dtype == jnp.bfloat16
    assert_matches_dense(case, np.asarray(out.astype(jnp.float32)), tol=1e-2)


def test_agrees_with_the_xla_path_on_wide_block_tables():
    """An engine's tables are max_model_len wide and padded with the null page."""
    rng = np.random.default_rng(5)
    case = make_case(rng, [(21, 1), (3, 1), (90, 12)], num_kv_heads=2, group=2, head_dim=32, page_size=4,
                     page_buckets=[128])
    assert case.metadata.block_tables.shape[1] == 128
    ours = np.asarray(ragged_paged_attention_cpu(*case.args()))
    xla = np.asarray(ragged_paged_attention_tiled(*case.args(), block_q=8, block_kv=16))
    np.testing.assert_allclose(ours, xla, rtol=2e-5, atol=2e-5)


def test_bad_inputs_are_named_before_the_call():
    rng = np.random.default_rng(6)
    case = make_case(rng, [(9, 2)], num_kv_heads=1, group=2, head_dim=32, page_size=4)
    q, k, v, kv_lens, tables, cu, num_seqs = case.args()
    with pytest.raises(ValueError, match="kv_lens: expected dtype int32"):
        ragged_paged_attention_cpu(q, k, v, kv_lens.astype(jnp.float32), tables, cu, num_seqs)
    with pytest.raises(ValueError, match="float16.*float32 or bfloat16"):
        ragged_paged_attention_cpu(*case.args(jnp.float16))


def test_auto_falls_back_to_xla_where_the_kernel_cannot_run(caplog, monkeypatch):
    rng = np.random.default_rng(7)
    case = make_case(rng, [(20, 3), (9, 1)], num_kv_heads=1, group=2, head_dim=32, page_size=4)
    q, k, v = case.args(jnp.float16)[:3]
    with caplog.at_level(logging.WARNING, logger="mmjax.attention.dispatch"):
        out = paged_attention(q, KVPages(k, v), case.metadata)  # float16: not a kernel dtype
    assert "float16" in caplog.text
    np.testing.assert_allclose(np.asarray(out[:4], np.float32), dense_attention(case)[:4], rtol=5e-3, atol=5e-3)
    with pytest.raises(ValueError, match="impl='cpu'.*float16"):
        paged_attention(q, KVPages(k, v), case.metadata, impl="cpu")
    monkeypatch.setenv("MMJAX_CPU_KERNEL", "0")
    assert "MMJAX_CPU_KERNEL=0" in kernel_unavailable(32, jnp.float32)


def test_no_compiler_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr(kernel_build.sysconfig, "get_config_var", lambda name: None)
    monkeypatch.setattr(kernel_build.shutil, "which", lambda name: None)
    with pytest.raises(KernelBuildError, match="no C.. compiler found"):
        kernel_build.find_compiler()


def test_a_build_is_cached_by_content(tmp_path, monkeypatch):
    """Built once; found again without the compiler; a changed define builds a new library."""
    monkeypatch.setenv("MMJAX_KERNEL_CACHE", str(tmp_path))
    source = tmp_path / "tiny.cc"
    source.write_text('extern "C" int mmjax_tiny() { return TINY; }\n')
    first = kernel_build.build_library(source, {"TINY": 1})
    assert first.parent == tmp_path and first.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == [], "no temporary file left"
    monkeypatch.setattr(kernel_build, "_compile", lambda *args: pytest.fail("a cached library was rebuilt"))
    assert kernel_build.build_library(source, {"TINY": 1}) == first
    monkeypatch.undo()
    monkeypatch.setenv("MMJAX_KERNEL_CACHE", str(tmp_path))
    second = kernel_build.build_library(source, {"TINY": 2})
    assert second != first
    import ctypes
    assert ctypes.CDLL(str(first)).mmjax_tiny() == 1 and ctypes.CDLL(str(second)).mmjax_tiny() == 2


def test_a_failed_build_says_what_the_compiler_said(tmp_path, monkeypatch):
    monkeypatch.setenv("MMJAX_KERNEL_CACHE", str(tmp_path))
    source = tmp_path / "broken.cc"
    source.write_text("this is not C++\n")
    with pytest.raises(KernelBuildError, match="failed to build broken.cc"):
        kernel_build.build_library(source, {})
    assert list(tmp_path.glob("*.so")) == [] and list(tmp_path.glob(".*")) == []


def test_a_build_started_in_the_background_is_waited_for_and_done_once(tmp_path, monkeypatch):
    monkeypatch.setenv("MMJAX_KERNEL_CACHE", str(tmp_path))
    thread = build_in_background(48)  # a head dim no other test builds
    assert thread is not None
    assert kernel_unavailable(48, jnp.float32) is None  # waits for the build under way, then uses it
    thread.join()
    assert len(list(tmp_path.glob("*.so"))) == 1, "built once"
    assert build_in_background(48) is None, "nothing left to build"


def test_load_builds_the_kernels_for_the_models_head_dim_while_reading_weights(monkeypatch, tmp_path):
    path = make_tiny_llava_checkpoint(tmp_path)
    asked = []
    monkeypatch.setattr(mmjax.kernels_cpu, "build_in_background", asked.append)
    monkeypatch.setattr(mmjax.kernels_cpu, "build_matmul_in_background", lambda: asked.append("matmul"))
    llm = mmjax.load(path, limit_mm_per_prompt={"image": 0})
    text = llm.model_config.hf_config.text_config
    assert asked == [getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads, "matmul"]
