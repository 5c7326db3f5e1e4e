"""The device mesh of sharded inference: axes ``("data", "model")``.

``"model"`` is the tensor-parallel axis (attention heads, MLP width, vocabulary
are split over it); ``"data"`` holds replicas of the model, each serving its own
requests. ``make_mesh`` builds one from a ``Mesh``, a dict of axis sizes or
nothing (a default picked from the device count and the model's dimensions),
and ``check_divisible`` says, before any weight is read, which dimension a
model axis does not divide.

The default rule (``default_mesh_shape``): put as many devices as possible on
``"model"`` without splitting or replicating a KV head — the largest divisor of
the device count that divides the KV heads, the attention heads,
the MLP width and the vocabulary — and the rest on ``"data"``. With no model
dimensions given, every device goes on ``"model"``. For LLaVA-1.5-7B (32 heads,
32 KV heads, MLP 11008, vocab 32064): 1 device -> 1x1, 4 -> 1x4, 8 -> 1x8,
256 -> 8x32 (data x model).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh

from mmjax.sharding.axes import AXES, DATA, MODEL
from mmjax.sharding.kv_heads import KVHeadLayout, kv_head_layout


@dataclasses.dataclass(frozen=True, kw_only=True)
class ShardedDims:
    """The sizes tensor parallelism splits over ``"model"`` (a decoder's, named as in its config)."""

    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    vocab_size: int

    @classmethod
    def of(cls, text_config) -> ShardedDims:
        """From a ``DecoderConfig`` (``mmjax.models.common.decoder_config``)."""
        return cls(num_heads=text_config.num_heads, num_kv_heads=text_config.num_kv_heads,
                   intermediate_size=text_config.intermediate_size, vocab_size=text_config.vocab_size)

    def split(self) -> dict[str, int]:
        """The dimensions that must be divisible by the model axis (KV heads may be replicated instead)."""
        return {"attention heads (num_heads)": self.num_heads,
                "MLP width (intermediate_size)": self.intermediate_size,
                "vocabulary (vocab_size)": self.vocab_size}


def check_divisible(model_axis: int, dims: ShardedDims) -> None:
    """Raise naming the first dimension the model axis does not divide.

    KV heads: as many or more than the model axis must be a multiple of it
    (each device holds ``K/model``); fewer must divide it (each is replicated
    on ``model/K`` devices).
    """
    for name, size in dims.split().items():
        if size % model_axis:
            raise ValueError(f"the mesh's 'model' axis ({model_axis} devices) does not divide the {name}: "
                             f"{size} % {model_axis} = {size % model_axis}")
    kv_head_layout(dims.num_kv_heads, model_axis)


def default_mesh_shape(num_devices: int, dims: ShardedDims | None = None) -> dict[str, int]:
    """``{"data": d, "model": m}`` by the rule in the module docstring."""
    if dims is None:
        return {DATA: 1, MODEL: num_devices}
    model = max(m for m in range(1, num_devices + 1)
                if num_devices % m == 0 and KVHeadLayout(dims.num_kv_heads, m).split
                and all(size % m == 0 for size in dims.split().values()))
    return {DATA: num_devices // model, MODEL: model}


def make_mesh(
    mesh: Mesh | Mapping[str, int] | None = None,
    *,
    dims: ShardedDims | None = None,
    devices: Sequence[jax.Device] | None = None,
) -> Mesh:
    """A ``("data", "model")`` mesh.

    Args:
      mesh: a ``Mesh`` with exactly these axis names (returned as is, after the
        checks), a dict of axis sizes (a missing axis is 1; fewer devices than
        exist takes the first ones), or None for the default shape.
      dims: the model's split dimensions: when given, the model axis is checked
        against them (and the default shape uses them).
      devices: the devices to use (default ``jax.devices()``, every host's).

    Raises:
      ValueError: unknown axis names, a size < 1, more devices than exist, or a
        model axis that does not divide a dimension (named, with both sizes).
    """
    if not (mesh is None or isinstance(mesh, (Mesh, Mapping))):
        raise TypeError(f"mesh must be a jax.sharding.Mesh with axes {AXES}, a dict of axis sizes such as "
                        f"{{'data': 2, 'model': 4}}, \"auto\" or None; got {type(mesh).__name__} {mesh!r}")
    devices = list(jax.devices() if devices is None else devices)
    if isinstance(mesh, Mesh):
        if tuple(mesh.axis_names) != AXES:
            raise ValueError(f"the mesh's axes must be {AXES}, got {tuple(mesh.axis_names)}")
        if dims is not None:
            check_divisible(mesh.shape[MODEL], dims)
        return mesh
    shape = default_mesh_shape(len(devices), dims) if mesh is None else _shape_of(mesh)
    needed = shape[DATA] * shape[MODEL]
    if needed > len(devices):
        raise ValueError(f"the mesh {shape} needs {needed} devices; only {len(devices)} exist "
                         f"({devices[0].platform if devices else 'none'})")
    if dims is not None:
        check_divisible(shape[MODEL], dims)
    return jax.make_mesh((shape[DATA], shape[MODEL]), AXES, (AxisType.Auto,) * 2, devices=devices[:needed])


def _shape_of(sizes: Mapping[str, int]) -> dict[str, int]:
    unknown = set(sizes) - set(AXES)
    if unknown:
        raise ValueError(f"unknown mesh axes {sorted(unknown)}; the axes are {AXES}")
    shape = {}
    for axis in AXES:
        size = sizes.get(axis, 1)
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)):
            raise TypeError(f"mesh axis {axis!r} must have an int size, got {type(size).__name__} {size!r}")
        shape[axis] = int(size)
    bad = {axis: size for axis, size in shape.items() if size < 1}
    if bad:
        raise ValueError(f"mesh axis sizes must be >= 1, got {bad}")
    return shape


def kv_pages_sharding(mesh: Mesh, num_kv_heads: int) -> jax.sharding.NamedSharding:
    """Where each layer's ``KVPages`` k/v ``[K, A, G, H]`` live.

    The page axis ``A`` is split over ``"data"``: each replica owns ``A / data``
    pages (its allocator hands out ids local to them). The KV heads lie as
    ``kv_head_layout`` says: split over ``"model"`` like the k/v projections
    that fill them, or replicated when there are fewer KV heads than model devices.
    """
    from jax.sharding import NamedSharding

    return NamedSharding(mesh, kv_head_layout(num_kv_heads, mesh.shape[MODEL]).kv_pages_spec)
