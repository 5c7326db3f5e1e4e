"""Native CPU kernels: C++ built on first use and called from XLA through its FFI; arrays in, arrays out.

``mmjax.attention`` uses ``ragged_paged_attention_cpu`` on CPU by default and
plain XLA (``mmjax.kernels_pallas.ragged_paged_attention_tiled``) where the
kernel cannot be built (``kernel_unavailable`` says why).
"""

from mmjax.kernels_cpu.build import KernelBuildError, kernel_cache_dir
from mmjax.kernels_cpu.ragged_paged_attention import (
    build_in_background,
    kernel_unavailable,
    ragged_paged_attention_cpu,
)

__all__ = ["KernelBuildError", "build_in_background", "kernel_cache_dir", "kernel_unavailable",
           "ragged_paged_attention_cpu"]
