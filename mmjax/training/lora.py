"""LoRA adapters on the decoder's projections, as pure functions of the state.

An adapter of a kernel ``W [in, out]`` is ``(a [in, r], b [r, out])``; the model runs with
``W + (alpha / r) · a @ b``. ``b`` starts at zero, so training starts from the base model;
``apply_adapters`` also folds them in for good, for saving and for the engine.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from mmjax.training.params import ParamSplit

#: The decoder projections LoRA adapts by default (vLLM's and PEFT's usual choice for Llama).
DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")

#: Adapters: ``{leaf index: {"a": [in, r], "b": [r, out]}}``.
Adapters = dict[int, dict[str, jax.Array]]


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    """``rank`` r, ``alpha`` (the scale is ``alpha / rank``), and the decoder projections to adapt."""

    rank: int = 8
    alpha: float = 16.0
    targets: tuple[str, ...] = DEFAULT_TARGETS

    def __post_init__(self) -> None:
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise ValueError(f"LoraConfig.rank must be an int >= 1, got {self.rank!r}")
        if not self.targets:
            raise ValueError("LoraConfig.targets names no projection")

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


def adapted_leaves(split: ParamSplit, config: LoraConfig, prefix: str = "language_model/layers/") -> list[int]:
    """Indices of the decoder kernels ``config`` adapts (``<prefix>*/<target>/kernel``; the family's
    ``lora_prefix``)."""
    found = [i for i, p in enumerate(split.paths)
             if p.startswith(prefix) and p.endswith("/kernel") and p.split("/")[-2] in config.targets]
    if not found:
        raise ValueError(f"no decoder kernel matches the LoRA targets {config.targets}")
    return found


def init_adapters(state_leaves: Sequence[jax.Array], indices: Sequence[int], config: LoraConfig,
                  key: jax.Array) -> Adapters:
    """``a`` ~ N(0, 1/in) (PEFT's Kaiming-uniform scale, Gaussian), ``b`` = 0, per adapted kernel."""
    adapters = {}
    for i, k in zip(indices, jax.random.split(key, len(indices))):
        kernel = state_leaves[i]
        fan_in, fan_out = kernel.shape
        a = jax.random.normal(k, (fan_in, config.rank), jnp.float32) / jnp.sqrt(fan_in)
        adapters[i] = {"a": a.astype(kernel.dtype), "b": jnp.zeros((config.rank, fan_out), kernel.dtype)}
    return adapters


def apply_adapters(leaves: Sequence[Any], adapters: Adapters, scale: float) -> list[Any]:
    """``leaves`` with each adapted kernel replaced by ``W + scale · a @ b``."""
    out = list(leaves)
    for i, ab in adapters.items():
        out[i] = leaves[i] + (scale * (ab["a"] @ ab["b"])).astype(leaves[i].dtype)
    return out

