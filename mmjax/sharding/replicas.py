"""One data replica's slice of the mesh, for work that belongs to a single replica.

A jitted function over the whole mesh runs on every device. For the engine's
step that is the point (each replica computes its own rows), but encoding one
request's images would then run on every replica, so each device would encode
the images of all ``R`` replicas' requests. Instead a request's images are
encoded on its own replica's devices only (``ReplicaViews.state(r)``): the
weights seen through the replica's sub-mesh are the same buffers, not copies.

On several hosts a process only holds the replicas whose devices it owns
(``owns(r)``); a replica spread over several hosts is held by each of them.
"""

from __future__ import annotations

from typing import Any

import jax
from jax.sharding import Mesh, NamedSharding

from mmjax.sharding.axes import DATA


class ReplicaViews:
    """Per-replica sub-meshes of a ``("data", "model")`` mesh and the model state seen through each."""

    def __init__(self, mesh: Mesh, state: Any):
        self.mesh = mesh
        self.meshes = [Mesh(mesh.devices[r:r + 1], mesh.axis_names, axis_types=mesh.axis_types)
                       for r in range(mesh.shape[DATA])]
        self._state = state
        self._states: dict[int, Any] = {}

    def set_state(self, state: Any) -> None:
        """Look at ``state`` from now on (new weights placed as the old ones); views are built again."""
        self._state = state
        self._states.clear()

    def owns(self, replica: int) -> bool:
        """Whether this process holds any device of ``replica`` (always, on one host)."""
        me = jax.process_index()
        return any(d.process_index == me for d in self.meshes[replica].devices.flat)

    def state(self, replica: int) -> Any:
        """The model state as arrays on ``replica``'s devices only (built once, sharing buffers)."""
        if replica not in self._states:
            self._states[replica] = jax.tree.map(lambda x: self._view(x, self.meshes[replica]), self._state)
        return self._states[replica]

    @staticmethod
    def _view(x: jax.Array, sub_mesh: Mesh) -> jax.Array:
        spec = x.sharding.spec
        if any(DATA in (axes if isinstance(axes, tuple) else (axes,)) for axes in spec):
            raise ValueError(f"a weight split over {DATA!r} ({spec}) has no whole copy on one replica")
        devices = set(sub_mesh.devices.flat)
        shards = [s.data for s in x.addressable_shards if s.device in devices]
        return jax.make_array_from_single_device_arrays(x.shape, NamedSharding(sub_mesh, spec), shards)
