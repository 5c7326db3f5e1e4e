"""``PagedAttend``: the decoder's attention over the paged KV cache, for one traced step.

It plugs into the decoder's ``Attend`` seam (``mmjax.models.common.attend``): each
layer hands it rotated ``q, k, v`` and its own ``KVPages`` (and its sliding window,
if it has one); it writes ``k, v`` into those pages, attends over them
(``paged_attention``: the Pallas kernel on GPU/TPU, the native kernel on CPU) and
returns the output with the new pages. It holds no state: the pages go in and come
out, layer by layer. Bidirectional spans (an image's tokens seeing each other) come
with the step's metadata (``AttentionMetadata.key_ends``), the same for every layer.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax

from mmjax.attention.dispatch import Impl, write_and_attend
from mmjax.kv_cache.metadata import AttentionMetadata
from mmjax.kv_cache.pages import KVPages
from mmjax.types import Array, Float, Int


@dataclasses.dataclass(frozen=True)
class PagedAttend:
    """``Attend`` over one layer's ``KVPages`` for packed ragged batches, one per data replica.

    The leading axis ``R`` of ``q`` and of every ``metadata`` field is the
    replica axis: 1 without a mesh; on a mesh, the "data" axis, each
    replica's tokens attending over its own slice of the pages.

    Attributes:
      metadata: the step's attention metadata (fields with a leading ``R``).
      impl: "auto", "pallas", "cpu", "xla" or "reference" (``mmjax.attention.resolve_impl``).
      mesh: the pages are split over its "data" (pages) and "model" (KV heads)
        axes; each device attends with its own replica's tokens and its own
        heads (``mmjax.attention.sharded``). None on one device.
      kernel_options: passed to the Pallas kernel (block sizes).
    """

    metadata: AttentionMetadata
    impl: Impl = "auto"
    mesh: Any = None
    kernel_options: tuple[tuple[str, Any], ...] = ()

    def __call__(
        self,
        q: Float[Array, "R T N H"],
        k: Float[Array, "R T K H"],
        v: Float[Array, "R T K H"],
        positions: Int[Array, "R T"],
        pages: KVPages,
        *,
        window: int | None = None,
    ) -> tuple[Float[Array, "R T N H"], KVPages]:
        """Writes this layer's ``k, v`` and attends; `window`: the layer's sliding window (keys, its own
        included), None for full attention."""
        del positions  # the metadata places every token
        options = dict(self.kernel_options, impl=self.impl, sliding_window=window)
        if self.mesh is not None:
            from mmjax.attention.sharded import sharded_write_and_attend

            out, pages = sharded_write_and_attend(self.mesh, q, k, v, pages, self.metadata, **options)
            return out.astype(q.dtype), pages
        if q.shape[0] != 1:
            raise ValueError(f"without a mesh PagedAttend takes one replica, q of shape [1, T, ...], got {q.shape}")
        metadata = jax.tree.map(lambda x: x[0], self.metadata)
        out, pages = write_and_attend(q[0], k[0], v[0], pages, metadata, **options)
        return out[None].astype(q.dtype), pages
