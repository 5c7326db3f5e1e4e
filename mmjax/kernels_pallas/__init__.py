"""Pallas kernels (GPU: Triton lowering, TPU: Mosaic), each with a jnp reference; arrays in, arrays out.

``mmjax.attention`` picks among them by backend and hands them a layer's pages.
"""

from mmjax.kernels_pallas.ragged_paged_attention import (
    ragged_paged_attention,
    ragged_paged_attention_reference,
    validate_inputs,
)
from mmjax.kernels_pallas.ragged_paged_attention_tiled import ragged_paged_attention_tiled

__all__ = ["ragged_paged_attention", "ragged_paged_attention_reference", "ragged_paged_attention_tiled",
           "validate_inputs"]
