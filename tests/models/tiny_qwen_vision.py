"""Shared helpers of the Qwen vision-tower tests: random transformers towers written as checkpoints, read back.

Not a conftest.py on purpose (see ``tiny_llava.py``).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable

import jax.numpy as jnp
import numpy as np
from flax import nnx

from mmjax.models.common.weights import CheckpointReader, fill_state


def randomize(module, seed: int = 0) -> None:
    """Every parameter random (norm scales and biases too), large enough that no layer is a near no-op."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * (0.2 if p.ndim > 1 else 0.5) + (p.ndim == 1) * 0.5)


def write_checkpoint(module, prefix: str) -> str:
    """The module's state dict as a ``model.safetensors`` whose names start with ``prefix``; returns the directory."""
    from safetensors.torch import save_file

    directory = tempfile.mkdtemp(prefix="mmjax-qwen-vision-")
    save_file({prefix + k: v.contiguous() for k, v in module.state_dict().items()},
              os.path.join(directory, "model.safetensors"))
    return directory


def load_tower(make: Callable[[], nnx.Module], targets: Callable[[set], dict], directory: str, aliases) -> nnx.Module:
    """Build ``make()`` abstractly and fill it from ``directory`` through the weight rows (``targets(model_paths)``)."""
    abstract = nnx.eval_shape(make)
    paths = {path for path, _ in nnx.to_flat_state(nnx.state(abstract, nnx.Param))}
    with CheckpointReader(directory, aliases) as reader:
        return fill_state(abstract, targets(paths), reader, jnp.float32)


def patches(grids, patch_dim: int, seed: int = 0) -> np.ndarray:
    """Random pixel patches for items of these grids, packed."""
    count = sum(t * h * w for t, h, w in grids)
    return np.random.default_rng(seed).standard_normal((count, patch_dim)).astype(np.float32)


def relative_error(ours, theirs) -> float:
    """``max |ours - theirs| / max |theirs|``."""
    ours, theirs = np.asarray(ours), np.asarray(theirs)
    assert ours.shape == theirs.shape, (ours.shape, theirs.shape)
    return float(np.abs(ours - theirs).max() / np.abs(theirs).max())
