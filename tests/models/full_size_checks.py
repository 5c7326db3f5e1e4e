"""A family's abstract model against transformers' on the meta device, parameter for parameter."""

from __future__ import annotations

import math

import jax.numpy as jnp
from flax import nnx

from mmjax.models.common.family import ModelFamily
from mmjax.models.common.weights import canonical_name


def assert_parameters_match(family: ModelFamily, cfg, aliases, torch_shapes: dict[str, tuple[int, ...]]) -> int:
    """Our abstract model (``nnx.eval_shape``, nothing allocated) has as many parameters as ``torch_shapes``, and
    every transformers parameter maps, through the family's weight table, to a leaf of the same size (after
    the table's permutation). Returns the parameter count."""
    params = dict(nnx.to_flat_state(nnx.state(family.abstract_model(cfg, jnp.bfloat16), nnx.Param)))
    ours = sum(math.prod(v.get_value().shape) for v in params.values())
    assert ours == sum(math.prod(s) for s in torch_shapes.values())
    targets = family.targets(cfg, set(params))
    assert {canonical_name(n, aliases) for n in torch_shapes} == set(targets)
    for name, shape in torch_shapes.items():
        target = targets[canonical_name(name, aliases)]
        perm = target.permutation or tuple(range(len(shape)))
        assert params[target.path].get_value().shape == tuple(shape[p] for p in perm), name
    return ours
