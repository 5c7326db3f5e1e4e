"""Partition specs from a rule table, and weights placed on the mesh as they are read.

``read_sharded`` builds a global array from only the shards this host's devices
hold: on a multi-host pod, each host reads its slices of each tensor from the
checkpoint files (safetensors slices are lazy), never the whole tensor unless
it is replicated.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

Path = tuple  # a parameter path, e.g. ("language_model", "layers", 0, "mlp", "up_proj", "kernel")
Index = tuple[slice, ...]


def path_name(path: Path) -> str:
    return "/".join(map(str, path))


def spec_for(path: Path, rules: Iterable[tuple[str, PartitionSpec]]) -> PartitionSpec:
    """The spec of the first rule whose regex matches the "/"-joined path.

    Raises:
      KeyError: no rule matches (a new parameter needs a row in its table).
    """
    name = path_name(path)
    for pattern, spec in rules:
        if re.search(pattern, name):
            return spec
    raise KeyError(f"no partition rule matches parameter {name!r}; add one to the model's rule table")


def partition_specs(paths: Iterable[Path], rules) -> dict[Path, PartitionSpec]:
    """``{path: spec}`` for every parameter path."""
    return {path: spec_for(path, rules) for path in paths}


def named_shardings(mesh: Mesh, specs: dict[Path, PartitionSpec]) -> dict[Path, NamedSharding]:
    return {path: NamedSharding(mesh, spec) for path, spec in specs.items()}


def read_sharded(
    shape: tuple[int, ...], sharding: NamedSharding, read: Callable[[Index], np.ndarray]
) -> jax.Array:
    """A global array of ``shape`` placed by ``sharding``, built from ``read(index)`` calls.

    ``read`` returns the host array of one index (a tuple of slices in the
    global array). It is called once per distinct shard this process's devices
    hold, so a replicated weight is read once per host, a split one piece by piece.
    """
    by_index: dict[tuple, list[jax.Device]] = {}
    for device, index in sharding.addressable_devices_indices_map(shape).items():
        by_index.setdefault(_key(index, shape), []).append(device)
    pieces = []
    for key, devices in by_index.items():
        host = read(tuple(slice(a, b) for a, b in key))
        pieces.extend(jax.device_put(host, d) for d in devices)
        del host
    return jax.make_array_from_single_device_arrays(shape, sharding, pieces)


def _key(index: Index, shape: tuple[int, ...]) -> tuple[tuple[int, int], ...]:
    return tuple(s.indices(n)[:2] for s, n in zip(index, shape))


def unsplit_parameters(state, specs: dict[Path, PartitionSpec]) -> list[str]:
    """Parameters whose spec splits them but whose array is fully replicated (for tests and checks)."""
    from flax import nnx

    bad = []
    for path, leaf in nnx.to_flat_state(state):
        value = leaf.get_value()
        if any(axis is not None for axis in specs[path]) and value.sharding.is_fully_replicated:
            bad.append(path_name(path))
    return bad
