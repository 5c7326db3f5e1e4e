"""Attention over the paged KV cache: one home for the dispatch, the decoder's seam and the sharded wrapper.

Above ``kernels_pallas`` and ``kernels_cpu`` (arrays in, arrays out) and
``kv_cache`` (pages, allocator, metadata), below the models and the engine:

- ``paged_attention`` / ``write_and_attend``: a Pallas kernel, the native CPU
  kernel, the XLA path or the reference for one layer's pages (``resolve_impl``
  picks by backend);
- ``PagedAttend``: the decoder's ``Attend`` over the cache, pages in and out;
- ``sharded_write_and_attend``: the same per device under ``shard_map`` on a mesh.
"""

from mmjax.attention.dispatch import IMPLS, Impl, paged_attention, resolve_impl, write_and_attend
from mmjax.attention.paged import PagedAttend
from mmjax.attention.sharded import sharded_write_and_attend

__all__ = ["IMPLS", "Impl", "PagedAttend", "paged_attention", "resolve_impl", "sharded_write_and_attend",
           "write_and_attend"]
