"""Paged KV cache data structures: device pages (`KVPages`), host page allocator, attention metadata."""

from mmjax.kv_cache.allocator import NULL_PAGE, OutOfPagesError, PageAllocator
from mmjax.kv_cache.metadata import AttentionMetadata, as_device, bucket, build_attention_metadata
from mmjax.kv_cache.pages import PADDING_SLOT, KVPages, init_kv_pages, kv_pages_bytes, write_kv_to_pages

__all__ = [
    "NULL_PAGE", "PADDING_SLOT", "AttentionMetadata", "KVPages", "OutOfPagesError", "PageAllocator",
    "as_device", "bucket", "build_attention_metadata", "init_kv_pages", "kv_pages_bytes",
    "write_kv_to_pages",
]
