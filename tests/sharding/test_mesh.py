"""Mesh shapes, defaults and the errors that name a dimension (one CPU device here)."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest
from jax.sharding import Mesh

from mmjax.sharding import ShardedDims, check_divisible, default_mesh_shape, make_mesh
from mmjax.sharding.kv_heads import kv_head_layout

LLAVA_7B = ShardedDims(num_heads=32, num_kv_heads=32, intermediate_size=11008, vocab_size=32064)
MISTRAL_7B = ShardedDims(num_heads=32, num_kv_heads=8, intermediate_size=14336, vocab_size=32064)


@pytest.mark.parametrize("dims, devices, expected", [
    (LLAVA_7B, 1, (1, 1)), (LLAVA_7B, 4, (1, 4)), (LLAVA_7B, 8, (1, 8)), (LLAVA_7B, 256, (8, 32)),
    (MISTRAL_7B, 1, (1, 1)), (MISTRAL_7B, 4, (1, 4)), (MISTRAL_7B, 8, (1, 8)), (MISTRAL_7B, 256, (32, 8)),
    (ShardedDims(num_heads=12, num_kv_heads=12, intermediate_size=36, vocab_size=96), 8, (2, 4)),
    (ShardedDims(num_heads=5, num_kv_heads=1, intermediate_size=52, vocab_size=384), 8, (8, 1)),
    (ShardedDims(num_heads=12, num_kv_heads=6, intermediate_size=48, vocab_size=96), 4, (2, 2)),
    (None, 8, (1, 8)),
])  # fmt: skip
def test_default_mesh_shape(dims, devices, expected):
    shape = default_mesh_shape(devices, dims)
    assert (shape["data"], shape["model"]) == expected


@pytest.mark.parametrize("dims, model, named", [
    (ShardedDims(num_heads=12, num_kv_heads=4, intermediate_size=64, vocab_size=64), 8,
     "attention heads (num_heads): 12 % 8 = 4"),
    (ShardedDims(num_heads=8, num_kv_heads=4, intermediate_size=60, vocab_size=64), 8,
     "MLP width (intermediate_size): 60 % 8 = 4"),
    (ShardedDims(num_heads=8, num_kv_heads=8, intermediate_size=64, vocab_size=100), 8,
     "vocabulary (vocab_size): 100 % 8 = 4"),
    (ShardedDims(num_heads=12, num_kv_heads=6, intermediate_size=64, vocab_size=64), 4,
     "KV heads (num_kv_heads): 6 % 4 = 2"),
])  # fmt: skip
def test_a_model_axis_that_does_not_divide_is_named(dims, model, named):
    with pytest.raises(ValueError, match="'model' axis") as info:
        check_divisible(model, dims)
    assert named in str(info.value) and f"({model} devices)" in str(info.value)


def test_fewer_kv_heads_than_the_model_axis_are_allowed():
    """2 KV heads on 8 devices: accepted, each head replicated on 8 / 2 = 4 devices; 3 heads (not a divisor) refused."""
    dims = ShardedDims(num_heads=8, num_kv_heads=2, intermediate_size=64, vocab_size=64)
    assert check_divisible(8, dims) is None
    layout = kv_head_layout(2, 8)
    assert not layout.split and layout.heads_per_device == 2 and layout.head_axis is None
    with pytest.raises(ValueError, match=r"num_kv_heads = 3\) do not divide"):
        check_divisible(8, dataclasses.replace(dims, num_kv_heads=3))


def test_make_mesh_from_a_dict_and_the_default():
    mesh = make_mesh({"data": 1, "model": 1})
    assert mesh.axis_names == ("data", "model") and mesh.devices.shape == (1, 1)
    assert make_mesh({"model": 1}).devices.shape == (1, 1)
    assert make_mesh(None).devices.shape == (1, len(jax.devices()))
    assert make_mesh(mesh) is mesh


def test_make_mesh_errors():
    with pytest.raises(ValueError, match=r"needs 8 devices; only 1 exist"):
        make_mesh({"data": 2, "model": 4}, devices=jax.devices()[:1])
    with pytest.raises(ValueError, match=r"unknown mesh axes \['tensor'\]"):
        make_mesh({"tensor": 1})
    with pytest.raises(ValueError, match=">= 1"):
        make_mesh({"model": 0})
    with pytest.raises(ValueError, match=r"axes must be \('data', 'model'\)"):
        make_mesh(Mesh(np.array(jax.devices()[:1]), ("x",)))
    with pytest.raises(TypeError, match=r"mesh must be a jax.sharding.Mesh .* got list \[2, 4\]"):
        make_mesh([2, 4])
    with pytest.raises(TypeError, match=r"mesh must be .* got str 'big'"):
        make_mesh("big")
    with pytest.raises(TypeError, match=r"mesh axis 'model' must have an int size, got str '4'"):
        make_mesh({"model": "4"})


def test_kv_heads_that_do_not_divide_a_larger_model_axis_are_refused():
    dims = ShardedDims(num_heads=12, num_kv_heads=3, intermediate_size=48, vocab_size=96)
    with pytest.raises(ValueError, match=r"num_kv_heads = 3\) do not divide the mesh's 'model' axis \(4 devices\): "
                                         r"4 % 3 = 1"):
        check_divisible(4, dims)
    check_divisible(6, dims)  # 3 KV heads, each on 2 of 6 devices
