"""Paged attention per device on a mesh: ``jax.shard_map`` over ``("data", "model")``.

XLA's SPMD partitioner splits plain-XLA attention by itself, but it cannot see
inside a Pallas kernel (a custom call): handed sharded pages, it would gather
them and run the kernel on every device. So on a mesh each device runs the
write and the attention of its own replica and its own heads explicitly:

- "data": replica ``r`` owns the ``r``-th slice of the page axis, and its
  tokens, block tables and slots (page ids local to that slice);
- "model", KV heads split (``K % model == 0``): each device holds ``K/model``
  KV heads of its pages and the ``N/model`` query heads that read them (GQA
  groups stay whole, as query head ``g`` reads KV head ``g // (N/K)``);
- "model", KV heads replicated (``model % K == 0``, fewer KV heads than
  devices): every device of a replica writes all KV heads (the same values
  everywhere) and attends with the one KV head its ``N/model`` query heads share.

Which of the two is ``mmjax.sharding.kv_head_layout``'s rule; other head
counts are refused when the mesh is made (``mmjax.sharding.check_divisible``). No KV page crosses a device: only the
attention output, whose head axis stays split into the o projection, and the
all-reduce after it.
"""

from __future__ import annotations

from typing import Any

import jax
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from mmjax.attention.dispatch import paged_attention, write_and_attend, write_kv
from mmjax.kv_cache.metadata import AttentionMetadata
from mmjax.kv_cache.pages import KVPages
from mmjax.sharding.axes import DATA, MODEL
from mmjax.sharding.kv_heads import kv_head_layout
from mmjax.types import Array, Float

HEADS = P(DATA, None, MODEL, None)  # [R, T, heads, H]: replicas over "data", heads over "model"


def sharded_write_and_attend(
    mesh: Mesh,
    q: Float[Array, "R T N H"],
    k: Float[Array, "R T K H"],
    v: Float[Array, "R T K H"],
    pages: KVPages,
    metadata: AttentionMetadata,
    **options: Any,
) -> tuple[Float[Array, "R T N H"], KVPages]:
    """``write_and_attend`` with each device doing its own replica and heads (see the module docstring).

    ``metadata``'s fields have a leading replica axis ``R`` (the "data" axis), as ``q``; each device gets
    its replica's positions and key ends. `options` go to ``paged_attention`` (sliding_window, impl, ...).
    """
    model, num_kv_heads = mesh.shape[MODEL], k.shape[2]
    layout = kv_head_layout(num_kv_heads, model)
    pages_spec = layout.kv_pages_spec
    if layout.split:
        kv = HEADS

        def local(q, k, v, pages, metadata):
            return write_and_attend(q, k, v, pages, metadata, **options)
    else:
        kv = P(DATA)

        def local(q, k, v, pages, metadata):
            pages = write_kv(pages, k, v, metadata.slot_mapping)  # all heads, same on every device
            head = jax.lax.axis_index(MODEL) * num_kv_heads // model  # the one KV head of this device's queries
            own = KVPages(*(jax.lax.dynamic_slice_in_dim(x, head, 1, axis=0) for x in (pages.k, pages.v)))
            return paged_attention(q, own, metadata, **options), pages

    def per_device(q, k, v, pages, metadata):
        first = lambda x: x[0]  # noqa: E731  (this device's one replica)
        out, pages = local(first(q), first(k), first(v), pages, jax.tree.map(first, metadata))
        return out[None], pages

    pages_specs = KVPages(pages_spec, pages_spec)
    # check_vma=False: a pallas_call's out_shape carries no varying-axes annotation. Replicated
    # pages stay identical on every device of a replica without the check: each writes the same k/v.
    return jax.shard_map(per_device, mesh=mesh, in_specs=(HEADS, kv, kv, pages_specs, P(DATA)),
                         out_specs=(HEADS, pages_specs), check_vma=False)(q, k, v, pages, metadata)
