"""How the engine's programs are compiled: per-backend XLA options and the persistent compilation cache.

Both are defaults a user gets without configuring anything:

- ``compiler_options()``: on a CPU without AMX, XLA's YNNPACK matmul fusions
  are turned off for the engine's programs (only those: the options go to
  their ``jit``, not to the process). Measured on the 2-core AMD host, they
  made the skinny matmuls of a decode step slower: an empty 8-token decode step
  of the LLaVA-1.5-shaped benchmark model took 49.7 ms with them and 31.8 ms
  without; a 2048-token prefill step was unchanged (1197 vs 1173 ms). On a CPU
  with AMX (``multiplies_bfloat16_in_tiles``) XLA's defaults are kept: there
  YNNPACK multiplies the bfloat16 prefill products on the tile unit
  (``mmjax.models.common.linear``), which halves a bfloat16 prefill of the
  benchmark (``benchmarks/prefill.py --dtype bfloat16``: 1.90 -> 0.94 s on the
  2-core Xeon host), and decode, whose products run on mmjax's own kernels,
  is unchanged within the noise in float32, bfloat16 and int8
  (``benchmarks/dtypes.py``, alternated).
- ``enable_compilation_cache()``: JAX's persistent compilation cache, under
  the user's cache directory (``$XDG_CACHE_HOME/mmjax/xla`` or
  ``~/.cache/mmjax/xla``), so a second process loads its programs instead of
  compiling them. ``MMJAX_COMPILATION_CACHE=0`` switches it off, any other
  value is taken as the directory; a cache the user configured in JAX is kept.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax
from jax.experimental.compilation_cache import compilation_cache

from mmjax.kernels_cpu.cpu_features import multiplies_bfloat16_in_tiles
from mmjax.user_cache import user_cache_dir

#: XLA options of the engine's programs on a CPU without AMX (none elsewhere).
_CPU_WITHOUT_TILES = {"xla_cpu_experimental_ynn_fusion_type": ""}


#: Programs that compile faster than this are not stored: the small helpers (5-40 ms each on CPU) cost
#: about as much to fetch. Measured on the 2-core host, the benchmark's first generate in a second
#: process: with 0.5 s most of the engine's step programs (0.44-0.65 s each with the CPU attention kernel)
#: were compiled again, 2.1 s of compilation and 6.8 s in all; with 0.1 s, 0.36 s and 4.6-4.8 s.
MIN_CACHED_COMPILE_SECONDS = 0.1


def compiler_options() -> dict[str, str]:
    """Options for the engine's ``jax.jit`` calls on the default backend."""
    if jax.default_backend() == "cpu" and not multiplies_bfloat16_in_tiles():
        return dict(_CPU_WITHOUT_TILES)
    return {}


def compilation_cache_dir() -> Path | None:
    """Where the persistent cache lives (None: switched off by ``MMJAX_COMPILATION_CACHE=0``)."""
    setting = os.environ.get("MMJAX_COMPILATION_CACHE", "")
    if setting.lower() in ("0", "false", "off", "no"):
        return None
    if setting:
        return Path(setting).expanduser()
    return user_cache_dir("xla")


def enable_compilation_cache() -> Path | None:
    """Turn on JAX's persistent compilation cache (idempotent); returns the directory in use, or None.

    Programs that compile in over ``MIN_CACHED_COMPILE_SECONDS`` are stored (see there).
    """
    configured = jax.config.jax_compilation_cache_dir
    if configured:  # the user's own choice wins
        return Path(configured)
    path = compilation_cache_dir()
    if path is None:
        return None
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:  # a read-only home: run without the cache rather than fail
        return None
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_CACHED_COMPILE_SECONDS)
    compilation_cache.reset_cache()  # a compile before now found no directory: look again
    return path
