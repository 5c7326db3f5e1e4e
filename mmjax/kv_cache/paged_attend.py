"""``PagedAttend``: the decoder's attention over the paged KV cache, for one traced step.

It plugs into the decoder's ``Attend`` seam (``mmjax.models.attention``): each
layer hands it rotated ``q, k, v``; it writes ``k, v`` into that layer's pages and
attends over them with ``paged_attention`` (the Pallas kernel on GPU/TPU, the
jnp reference on CPU). The updated pages are collected in ``self.pages`` while
the step is traced, and the jitted step returns them: the state is functional.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax

from mmjax.kernels_pallas.dispatch import Impl, write_and_attend
from mmjax.kv_cache.metadata import AttentionMetadata
from mmjax.kv_cache.pages import KVPages
from mmjax.types import Array, Float, Int


class PagedAttend:
    """``Attend`` over per-layer ``KVPages`` for packed ragged batches, one per data replica.

    The batch axis ``R`` of ``q`` and of every ``metadata`` field is the replica
    axis: 1 without a mesh; on a mesh, the "data" axis, with each replica's
    tokens attending over its own slice of the pages.
    """

    def __init__(
        self, pages: Sequence[KVPages], metadata: AttentionMetadata, *, impl: Impl = "auto", mesh: Any = None,
        **kernel_options: Any
    ):
        """``mesh``: the pages are split over its "data" (pages) and "model" (KV heads) axes;
        each device attends with its own replica's tokens and its own heads
        (``mmjax.sharding.attention``)."""
        self.pages = list(pages)
        self.metadata = metadata
        self.mesh = mesh
        self.options = dict(impl=impl, **kernel_options)

    def __call__(
        self,
        q: Float[Array, "R T N H"],
        k: Float[Array, "R T K H"],
        v: Float[Array, "R T K H"],
        positions: Int[Array, "R T"],
        layer: int,
    ) -> Float[Array, "R T N H"]:
        if self.mesh is not None:
            from mmjax.sharding.attention import sharded_write_and_attend

            out, self.pages[layer] = sharded_write_and_attend(
                self.mesh, q, k, v, self.pages[layer], self.metadata, **self.options)
            return out.astype(q.dtype)
        if q.shape[0] != 1:
            raise ValueError(f"without a mesh PagedAttend takes one replica, q of shape [1, T, ...], got {q.shape}")
        metadata = jax.tree.map(lambda x: x[0], self.metadata)
        out, self.pages[layer] = write_and_attend(q[0], k[0], v[0], self.pages[layer], metadata, **self.options)
        return out[None].astype(q.dtype)
