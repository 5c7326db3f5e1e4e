"""Pallas kernels (GPU: Triton lowering, TPU: Mosaic), each with a jnp reference.

`paged_attention` picks the kernel on GPU/TPU and the reference on CPU.
"""

from mmjax.kernels_pallas.dispatch import paged_attention, resolve_impl, write_and_attend
from mmjax.kernels_pallas.ragged_paged_attention import (
    ragged_paged_attention,
    ragged_paged_attention_reference,
    validate_inputs,
)
from mmjax.kv_cache.pages import write_kv_to_pages

__all__ = [
    "paged_attention", "ragged_paged_attention", "ragged_paged_attention_reference", "resolve_impl",
    "validate_inputs", "write_and_attend", "write_kv_to_pages",
]
