"""What a user gets without configuring anything: batch sizes for the backend, and the compilation cache."""

from __future__ import annotations

import jax
import pytest

from mmjax.engine import compilation, defaults
from mmjax.engine.config import EngineConfig


def test_cpu_defaults_are_the_measured_fast_sizes():
    config = EngineConfig()
    assert (config.max_num_seqs, config.max_num_batched_tokens) == (16, 2048)
    assert config == EngineConfig(), "two default configs must be equal: the engine is kept per config"
    assert config.token_buckets[-1] == 2048 and 16 in config.token_buckets


def test_a_budget_set_alone_bounds_the_sequences_and_seqs_alone_raise_the_budget():
    small = EngineConfig(max_num_batched_tokens=8)
    assert small.max_num_seqs == 8, "a step of 8 tokens cannot hold more than 8 sequences"
    many = EngineConfig(max_num_seqs=4096)
    assert many.max_num_batched_tokens == 4096, "a decode step runs one token per sequence"
    both = EngineConfig(max_num_seqs=4, max_num_batched_tokens=64)
    assert (both.max_num_seqs, both.max_num_batched_tokens) == (4, 64)
    with pytest.raises(ValueError, match=r"max_num_batched_tokens \(8\) must be >= max_num_seqs \(16\)"):
        EngineConfig(max_num_seqs=16, max_num_batched_tokens=8)


@pytest.mark.parametrize("device_gib,budget", [(80, 16384), (40, 8192)])
def test_gpu_defaults_follow_vllm_by_device_memory(monkeypatch, device_gib, budget):
    monkeypatch.setattr(defaults, "_device_bytes", lambda: device_gib * 2**30)
    assert defaults.default_batch_sizes("gpu") == (64, budget)


@pytest.fixture
def jax_cache_config():
    """Restore JAX's compilation-cache settings after a test changes them."""
    saved = (jax.config.jax_compilation_cache_dir, jax.config.jax_persistent_cache_min_compile_time_secs)
    yield
    jax.config.update("jax_compilation_cache_dir", saved[0])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", saved[1])
    compilation.compilation_cache.reset_cache()


def test_compilation_cache_goes_under_the_users_cache_directory(monkeypatch, tmp_path, jax_cache_config):
    monkeypatch.delenv("MMJAX_COMPILATION_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    jax.config.update("jax_compilation_cache_dir", None)
    assert compilation.enable_compilation_cache() == tmp_path / "mmjax" / "xla"
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / "mmjax" / "xla")
    assert (tmp_path / "mmjax" / "xla").is_dir()


def test_compilation_cache_switched_off_by_the_environment(monkeypatch, jax_cache_config):
    monkeypatch.setenv("MMJAX_COMPILATION_CACHE", "0")
    jax.config.update("jax_compilation_cache_dir", None)
    assert compilation.enable_compilation_cache() is None
    assert jax.config.jax_compilation_cache_dir is None


def test_compilation_cache_keeps_the_users_own_directory(monkeypatch, tmp_path, jax_cache_config):
    monkeypatch.setenv("MMJAX_COMPILATION_CACHE", str(tmp_path / "ours"))
    jax.config.update("jax_compilation_cache_dir", str(tmp_path / "theirs"))
    assert compilation.enable_compilation_cache() == tmp_path / "theirs"
    assert not (tmp_path / "ours").exists()


@pytest.mark.parametrize("tiles", [False, True])
def test_cpu_programs_compile_with_ynnpack_fusions_only_where_there_are_tiles(monkeypatch, tiles):
    """Without AMX, the engine's programs turn XLA's YNNPACK fusions off (they slowed decode); with AMX they keep
    XLA's defaults, which multiply the bfloat16 prefill products on the tile unit."""
    monkeypatch.setattr(compilation, "multiplies_bfloat16_in_tiles", lambda: tiles)
    options = compilation.compiler_options()
    assert options == ({} if tiles else {"xla_cpu_experimental_ynn_fusion_type": ""})
    a, b = jax.numpy.ones((8, 512)), jax.numpy.ones((512, 1376))
    default = jax.jit(lambda a, b: a @ b).lower(a, b).compile().as_text()
    ours = jax.jit(lambda a, b: a @ b, compiler_options=options).lower(a, b).compile().as_text()
    assert "ynn_fusion" in default, "this XLA fuses the decode-shaped matmul with YNNPACK by default"
    assert ("ynn_fusion" in ours) == tiles, "the option must reach XLA"
