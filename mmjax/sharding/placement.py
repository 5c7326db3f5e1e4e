"""Where a step's arrays go: on one device, or on a ``("data", "model")`` mesh.

Every input of an engine step has a leading replica axis ``R`` (the mesh's
"data" axis, 1 on one device), placed split over "data"; the KV pages lie as
``kv_pages_sharding`` says; a replica's own work (encoding its requests'
images) runs on its own devices (``ReplicaViews``). ``Placement`` answers all
three for the device runner and for compile-only analysis, so that nothing
else decides where an array lives.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from mmjax.sharding.axes import DATA
from mmjax.sharding.mesh import kv_pages_sharding
from mmjax.sharding.replicas import ReplicaViews


class Placement:
    """The placement of an engine's arrays for a model of ``num_kv_heads`` KV heads.

    Attributes:
      mesh: the ``("data", "model")`` mesh, or None (one device).
      num_replicas: ``R``, the size of the "data" axis (1 without a mesh).
      kv_sharding: where each layer's KV pages live (None on one device).
    """

    def __init__(self, mesh: Mesh | None, num_kv_heads: int, state: Any):
        self.mesh = mesh
        self.num_replicas = 1 if mesh is None else mesh.shape[DATA]
        self.kv_sharding = None if mesh is None else kv_pages_sharding(mesh, num_kv_heads)
        self._rows = None if mesh is None else NamedSharding(mesh, PartitionSpec(DATA))
        self._replicas = None if mesh is None else ReplicaViews(mesh, state)
        self._state = state

    def put(self, x: np.ndarray) -> jax.Array | np.ndarray:
        """A step input with a leading replica axis, as the step program takes it: split over "data"
        on a mesh; on one device, the host array itself, which the program's call copies over.

        (``jax.device_put`` of a small array costs ~70 us on the 2-core host, a program argument ~4 us:
        a decode step's ten inputs took 1.8 ms of a 7.9 ms bfloat16 step.) Each process places only
        the rows of its own devices' replicas (on several hosts the other rows may differ: another
        host's embeddings are not computed here).
        """
        if self.mesh is None:
            return x
        return jax.make_array_from_callback(x.shape, self._rows, lambda index: x[index])

    def abstract(self, shape: tuple[int, ...], dtype: Any) -> jax.ShapeDtypeStruct:
        """The ``ShapeDtypeStruct`` of a step input ``put`` would place (for compile-only analysis)."""
        return jax.ShapeDtypeStruct(shape, dtype, sharding=self._rows)

    def owned_replicas(self) -> list[int]:
        """The replicas whose devices this process holds (``[0]`` on one device)."""
        return [r for r in range(self.num_replicas) if self.owns(r)]

    def owns(self, replica: int) -> bool:
        """Whether this process holds a device of ``replica`` (always, on one host)."""
        return self._replicas is None or self._replicas.owns(replica)

    def replica_state(self, replica: int) -> Any:
        """The model state as seen from ``replica``'s devices only (the same buffers; the state itself on
        one device)."""
        return self._state if self._replicas is None else self._replicas.state(replica)

    def set_state(self, state: Any) -> None:
        """Use ``state`` (the same structure, placed as the old one) for ``replica_state`` from now on."""
        self._state = state
        if self._replicas is not None:
            self._replicas.set_state(state)

    def replica_sharding(self, replica: int) -> jax.sharding.Sharding | None:
        """Replicated over ``replica``'s devices; None on one device (the default device)."""
        if self._replicas is None:
            return None
        return NamedSharding(self._replicas.meshes[replica], PartitionSpec())

    def put_on_replica(self, tree: Any, replica: int) -> Any:
        """Host arrays onto ``replica``'s devices, replicated over them."""
        sharding = self.replica_sharding(replica)
        return jax.tree.map(lambda x: jax.device_put(x, sharding), tree)

    def stack_replicas(self, per_replica: dict[int, jax.Array], shape: tuple[int, ...]) -> jax.Array:
        """One ``[R, ...]`` array split over "data" from each owned replica's ``[1, ...]`` array (no copy)."""
        if self.mesh is None:
            return per_replica[0]
        shards = [s.data for array in per_replica.values() for s in array.addressable_shards]
        return jax.make_array_from_single_device_arrays(shape, self._rows, shards)
