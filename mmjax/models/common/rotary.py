"""Rotary position embeddings: inverse frequencies by rope type, and the rotation itself."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from mmjax.batch_invariant import batch_invariant, elementwise, separately
from mmjax.models.common.decoder_config import DecoderConfig
from mmjax.types import Array, ArrayLike, Float, Int, shape_checked


def rope_inv_freq(cfg: DecoderConfig) -> np.ndarray:
    """Inverse rotary frequencies, ``float32[H/2]``, as transformers' ROPE_INIT_FUNCTIONS."""
    dim = cfg.head_dim
    exponents = np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / np.float32(dim)
    inv_freq = (1.0 / (np.float32(cfg.rope_theta) ** exponents)).astype(np.float32)
    params = dict(cfg.rope_scaling)
    if cfg.rope_type == "linear":
        return (inv_freq / np.float32(params["factor"])).astype(np.float32)
    if cfg.rope_type == "llama3":
        return _llama3_inv_freq(inv_freq, params)
    return inv_freq


def _llama3_inv_freq(inv_freq: np.ndarray, p: dict[str, float]) -> np.ndarray:
    # Llama 3.1: keep high frequencies, divide low ones by `factor`, blend in between.
    factor, old_len = p["factor"], p["original_max_position_embeddings"]
    low_wavelen, high_wavelen = old_len / p["low_freq_factor"], old_len / p["high_freq_factor"]
    wavelen = 2 * math.pi / inv_freq
    scaled = np.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - p["low_freq_factor"]) / (p["high_freq_factor"] - p["low_freq_factor"])
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return np.where(is_medium, smoothed, scaled).astype(np.float32)


def rope_frequency_axes(cfg: DecoderConfig) -> np.ndarray:
    """Which position axis each rotary frequency reads, ``int32[H/2]``: all 0 for one position per token.

    M-RoPE (Qwen2.5-VL): ``mrope_section = (t, h, w)`` frequencies in three blocks; interleaved
    (Qwen3-VL): height and width take every third frequency from the 2nd and 3rd, within
    ``3 * h`` and ``3 * w`` of the start, the rest temporal (transformers' ``apply_interleaved_mrope``).
    """
    half = cfg.head_dim // 2
    if not cfg.mrope_section:
        return np.zeros(half, np.int32)
    if not cfg.mrope_interleaved:
        return np.repeat(np.arange(3, dtype=np.int32), cfg.mrope_section)
    axes = np.zeros(half, np.int32)
    for axis in (1, 2):
        axes[axis:cfg.mrope_section[axis] * 3:3] = axis
    return axes


@shape_checked
def apply_rope(
    x: Float[Array, "B T heads H"], positions: Int[ArrayLike, "B T"] | Int[ArrayLike, "B P T"],
    inv_freq: Float[np.ndarray, "H//2"], frequency_axes: Int[np.ndarray, "H//2"] | None = None,
) -> Float[Array, "B T heads H"]:
    """Rotate halves (``rotate_half`` convention, not interleaved pairs); ``heads`` is N for q, K for k.

    ``positions``: one per token ``[B, T]``, or ``P`` per token ``[B, P, T]`` (M-RoPE's temporal,
    height, width), frequency ``j`` turning by position ``frequency_axes[j]``.
    """
    if positions.ndim == 3:
        positions = jnp.take(positions, jnp.asarray(frequency_axes), axis=1)  # B H/2 T
        angles = jnp.swapaxes(positions, 1, 2).astype(jnp.float32) * jnp.asarray(inv_freq)
    else:
        angles = positions[..., None].astype(jnp.float32) * jnp.asarray(inv_freq)  # B T H/2
    # cos and sin of the half angles, behind a barrier: XLA merges the identical ones of every layer's q and k
    # into one, where it used to fuse a copy into each consumer (16 of each a step of the 8-layer benchmark
    # model, 32x the work; the 8 prompts' prefill 1.81 -> 1.73 s, benchmarks/prefill.py)
    if batch_invariant():  # cos and sin the same bits for every element (mmjax.batch_invariant)
        cos, sin = separately(elementwise("cos", angles), elementwise("sin", angles))
    else:
        cos, sin = jax.lax.optimization_barrier((jnp.cos(angles), jnp.sin(angles)))
    cos = jnp.concatenate([cos, cos], axis=-1)[:, :, None, :].astype(x.dtype)
    sin = jnp.concatenate([sin, sin], axis=-1)[:, :, None, :].astype(x.dtype)
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    if batch_invariant():  # both products rounded before the sum (not one FMA in some programs only)
        turned, moved = separately(x * cos, rotated * sin)
        return turned + moved
    return x * cos + rotated * sin
