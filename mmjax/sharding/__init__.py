"""Sharded inference on a ``("data", "model")`` device mesh (see docs/sharding.md)."""

from mmjax.sharding.axes import AXES, DATA, MODEL
from mmjax.sharding.kv_heads import KVHeadLayout, kv_head_layout
from mmjax.sharding.mesh import (
    ShardedDims,
    check_divisible,
    default_mesh_shape,
    kv_pages_sharding,
    make_mesh,
)
from mmjax.sharding.specs import (
    named_shardings,
    partition_specs,
    read_sharded,
    spec_for,
    unsplit_parameters,
)

__all__ = [
    "AXES", "DATA", "MODEL", "KVHeadLayout", "ShardedDims", "check_divisible", "default_mesh_shape",
    "kv_head_layout", "kv_pages_sharding", "make_mesh", "named_shardings", "partition_specs", "read_sharded",
    "spec_for", "unsplit_parameters",
]
