"""Paged attention per device on a mesh: ``jax.shard_map`` over the ``"model"`` axis.

XLA's SPMD partitioner splits plain-XLA attention by itself, but it cannot see
inside a Pallas kernel (a custom call): handed sharded pages, it would gather
them and run the kernel on every device. So on a mesh each device runs the
write and the attention of its own heads explicitly:

- KV heads split (``K % model == 0``): each device holds ``K/model`` KV heads
  of the pages and the ``N/model`` query heads that read them (GQA groups stay
  whole, as query head ``g`` reads KV head ``g // (N/K)``);
- KV heads replicated (``K < model`` and ``model % K == 0``): every device
  writes all KV heads (the same values everywhere) and attends with the one
  KV head its ``N/model`` query heads share;
- otherwise (``K < model``, ``model % K != 0``, e.g. 3 KV heads on 4 devices):
  no shard_map (``shardable`` is False); XLA partitions the step as it can,
  which for the Pallas kernel means gathering the pages. Pick a model axis
  that divides the KV heads or that they divide.

Either way no KV page crosses a device: only the attention output, whose head
axis stays split into the o projection, and the all-reduce after it.
"""

from __future__ import annotations

from typing import Any

import jax
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from mmjax.kernels_pallas.dispatch import paged_attention, write_and_attend
from mmjax.kv_cache.metadata import AttentionMetadata
from mmjax.kv_cache.pages import KVPages, write_kv_to_pages
from mmjax.sharding.mesh import MODEL
from mmjax.types import Array, Float

HEADS = P(None, MODEL, None)  # [T, heads, H] split over heads


def shardable(mesh: Mesh, num_kv_heads: int) -> bool:
    """Whether ``sharded_write_and_attend`` can split this many KV heads over the model axis."""
    model = mesh.shape[MODEL]
    return num_kv_heads % model == 0 or model % num_kv_heads == 0


def sharded_write_and_attend(
    mesh: Mesh,
    q: Float[Array, "T N H"],
    k: Float[Array, "T K H"],
    v: Float[Array, "T K H"],
    pages: KVPages,
    metadata: AttentionMetadata,
    **options: Any,
) -> tuple[Float[Array, "T N H"], KVPages]:
    """``write_and_attend`` with each device doing its own heads (see the module docstring)."""
    model, num_kv_heads = mesh.shape[MODEL], k.shape[1]
    if num_kv_heads % model == 0:
        kv, pages_spec = HEADS, P(MODEL)

        def local(q, k, v, pages, metadata):
            return write_and_attend(q, k, v, pages, metadata, **options)
    elif model % num_kv_heads == 0:
        kv, pages_spec = P(), P()

        def local(q, k, v, pages, metadata):
            pages = write_kv_to_pages(pages, k, v, metadata.slot_mapping)  # all heads, same on every device
            head = jax.lax.axis_index(MODEL) * num_kv_heads // model  # the one KV head of this device's queries
            own = KVPages(*(jax.lax.dynamic_slice_in_dim(x, head, 1, axis=0) for x in (pages.k, pages.v)))
            return paged_attention(q, own, metadata, **options), pages
    else:
        raise ValueError(f"{num_kv_heads} KV heads cannot be split over a 'model' axis of {model} devices "
                         f"(neither divides the other)")
    pages_specs = KVPages(pages_spec, pages_spec)
    # check_vma=False: a pallas_call's out_shape carries no varying-axes annotation. Replicated
    # pages stay identical on every device without the check: each writes the same k/v.
    return jax.shard_map(local, mesh=mesh, in_specs=(HEADS, kv, kv, pages_specs, P()),
                         out_specs=(HEADS, pages_specs), check_vma=False)(q, k, v, pages, metadata)

