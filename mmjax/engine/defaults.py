"""The batch sizes an ``EngineConfig`` gets when the user sets none: sized for the backend.

On GPU the figures are vLLM's own defaults for offline inference (its
``EngineArgs`` for the ``LLM`` class): a token budget of 16384 on devices of
70 GiB and more (H100/H200 class), 8192 below. TPUs follow vLLM's TPU table
(v6e 2048, v5e 1024, v5p 512; others 1024). The sequence count is capped at 64
on accelerators (vLLM: 256 to 1024) because the engine's arena of placeholder
embeddings holds ``max_num_seqs`` prompts at the model's limit.

On CPU the budget is 2048 tokens and 16 sequences, measured on the 2-core
benchmark host (``benchmarks/generate_vs_transformers.py``): with the old
512-token budget, prefilling 8 LLaVA prompts of ~600 tokens took 10 steps
and 10.9 s; with 2048, 3 steps and 7.8 s (the attention loops stop at each
sequence's real context, so a bigger budget costs no padding).

The encoder batch (``default_encoder_batch``): on GPU and TPU the requests
whose images a step starts go through the vision tower together, up to 8 per
program call (bigger products are what those chips are fast at). On CPU it is
1: measured on the 2-core host with the benchmark's CLIP tower (256 wide, 577
patches), one image takes 49 ms alone, 67 ms each when 4 go through one
vmapped call and 62 ms each when concatenated: the batched activations fall
out of cache.
"""

from __future__ import annotations

import jax

_TPU_BUDGETS = {"v6": 2048, "v5 lite": 1024, "v5e": 1024, "v5p": 512}


def default_batch_sizes(platform: str | None = None) -> tuple[int, int]:
    """``(max_num_seqs, max_num_batched_tokens)`` for ``platform`` (default: JAX's default backend)."""
    platform = platform or jax.default_backend()
    if platform == "gpu":
        return 64, 16384 if _device_bytes() >= 70 * 2**30 else 8192
    if platform == "tpu":
        kind = jax.devices()[0].device_kind.lower()
        return 64, next((b for name, b in _TPU_BUDGETS.items() if name in kind), 1024)
    return 16, 2048


def default_encoder_batch(platform: str | None = None) -> int:
    """Requests encoded by one vision-tower call on ``platform`` (default: JAX's default backend)."""
    return 1 if (platform or jax.default_backend()) == "cpu" else 8


def _device_bytes() -> int:
    stats = jax.devices()[0].memory_stats() or {}
    return int(stats.get("bytes_limit", 0))
