"""``PagedAttend``: the decoder's attention over the paged KV cache, for one traced step.

It plugs into the decoder's ``Attend`` seam (``mmjax.models.attention``): each
layer hands it rotated ``q, k, v``; it writes ``k, v`` into that layer's pages and
attends over them with ``paged_attention`` (the Pallas kernel on GPU/TPU, the
jnp reference on CPU). The updated pages are collected in ``self.pages`` while
the step is traced, and the jitted step returns them: the state is functional.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

from mmjax.kernels_pallas.dispatch import Impl, write_and_attend
from mmjax.kv_cache.metadata import AttentionMetadata
from mmjax.kv_cache.pages import KVPages
from mmjax.types import Array, Float, Int


class PagedAttend:
    """``Attend`` over per-layer ``KVPages`` for a packed ragged batch (``B == 1``)."""

    def __init__(
        self, pages: Sequence[KVPages], metadata: AttentionMetadata, *, impl: Impl = "auto", mesh: Any = None,
        **kernel_options: Any
    ):
        """``mesh``: the pages and heads are split over its "model" axis; each device
        attends with its own heads (``mmjax.sharding.attention``)."""
        self.pages = list(pages)
        self.metadata = metadata
        self.mesh = mesh
        self.options = dict(impl=impl, **kernel_options)

    def __call__(
        self,
        q: Float[Array, "1 T N H"],
        k: Float[Array, "1 T K H"],
        v: Float[Array, "1 T K H"],
        positions: Int[Array, "1 T"],
        layer: int,
    ) -> Float[Array, "1 T N H"]:
        if q.shape[0] != 1:
            raise ValueError(f"PagedAttend takes a packed batch of shape [1, T, ...], got q {q.shape}")
        step = write_and_attend
        if self.mesh is not None:
            from mmjax.sharding.attention import sharded_write_and_attend

            step = functools.partial(sharded_write_and_attend, self.mesh)
        out, self.pages[layer] = step(q[0], k[0], v[0], self.pages[layer], self.metadata, **self.options)
        return out[None].astype(q.dtype)
