"""LoRA adapters on the decoder's projections, as pure functions of the state.

An adapter of a kernel ``W [in, out]`` is ``(a [in, r], b [r, out])``; the model runs with
``W + (alpha / r) · a @ b``. ``b`` starts at zero, so training starts from the base model;
``merge_adapters`` folds them in for good, for saving and for the engine. How a delta meets its kernel is
the linear-layer policy's (``mmjax.models.common.linear.lora_kernel``, ``merged_kernel``): an int8 kernel
stays int8 and frozen while float adapters train (QLoRA), and is quantized again when they are merged.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

import jax
import jax.numpy as jnp

from mmjax.models.common.linear import lora_kernel, merged_kernel
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


def scale_leaves(split: ParamSplit, indices: Sequence[int]) -> dict[int, int]:
    """``{kernel leaf index: its kernel_scale leaf index}`` for the adapted kernels stored as int8."""
    where = {path: i for i, path in enumerate(split.paths)}
    return {i: where[split.paths[i] + "_scale"] for i in indices if split.paths[i] + "_scale" in where}


def init_adapters(state_leaves: Sequence[jax.Array], indices: Sequence[int], config: LoraConfig,
                  key: jax.Array) -> Adapters:
    """``a`` ~ N(0, 1/in) (PEFT's Kaiming-uniform scale, Gaussian), ``b`` = 0, per adapted kernel; in the
    kernel's dtype, float32 for an int8 kernel."""
    adapters = {}
    for i, k in zip(indices, jax.random.split(key, len(indices))):
        kernel = state_leaves[i]
        fan_in, fan_out = kernel.shape
        dtype = jnp.float32 if kernel.dtype == jnp.int8 else kernel.dtype
        a = jax.random.normal(k, (fan_in, config.rank), jnp.float32) / jnp.sqrt(fan_in)
        adapters[i] = {"a": a.astype(dtype), "b": jnp.zeros((config.rank, fan_out), dtype)}
    return adapters


def apply_adapters(leaves: Sequence[Any], adapters: Adapters, scale: float,
                   scales: Mapping[int, int] = MappingProxyType({})) -> list[Any]:
    """``leaves`` with each adapted kernel replaced by the kernel that multiplies as ``W + scale · a @ b``
    (``lora_kernel``; ``scales``: the int8 kernels' scale leaves, ``scale_leaves``), for training."""
    out = list(leaves)
    for i, ab in adapters.items():
        j = scales.get(i)
        out[i] = lora_kernel(leaves[i], None if j is None else leaves[j], scale * (ab["a"] @ ab["b"]))
    return out


def merge_adapters(leaves: Sequence[Any], adapters: Adapters, scale: float,
                   scales: Mapping[int, int] = MappingProxyType({})) -> list[Any]:
    """``leaves`` with the adapters folded in for good (``merged_kernel``): float kernels become
    ``W + scale · a @ b``, int8 kernels are that sum quantized again (and their scale leaves replaced)."""
    out = list(leaves)
    for i, ab in adapters.items():
        j = scales.get(i)
        kernel, new_scale = merged_kernel(leaves[i], None if j is None else leaves[j], scale * (ab["a"] @ ab["b"]))
        out[i] = kernel
        if j is not None:
            out[j] = new_scale
    return out
