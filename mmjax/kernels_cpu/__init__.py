"""Native CPU kernels: C++ built on first use and called from XLA through its FFI; arrays in, arrays out.

``mmjax.attention`` uses ``ragged_paged_attention_cpu`` on CPU by default and
plain XLA (``mmjax.kernels_pallas.ragged_paged_attention_tiled``) where the
kernel cannot be built (``kernel_unavailable`` says why). The engine's step
programs on CPU send the decoder's few-row products (decode) to
``skinny_matmul_cpu`` through ``few_rows_dot_general`` (``matmul_unavailable``
says why not, where not), and a tied LM head's (``x @ E.T``) to
``transposed_skinny_matmul_cpu``. ``skinny_matmul_int8_cpu`` multiplies by int8
weights with per-column scales (``int8_matmul_unavailable`` says why not, where not).
``bidirectional_attention_cpu`` runs a vision tower's attention on the attention kernel (the engine's encoder
programs, through ``mmjax.models.common.native_attention``). A new KV cache on one CPU device is
``zeroed_arrays``: zeros the operating system fills on first touch.
"""

from mmjax.kernels_cpu.build import KernelBuildError, kernel_cache_dir
from mmjax.kernels_cpu.ragged_paged_attention import (
    bidirectional_attention_cpu,
    build_in_background,
    kernel_unavailable,
    ragged_paged_attention_cpu,
)
from mmjax.kernels_cpu.skinny_matmul import (
    few_rows_dot_general,
    int8_matmul_unavailable,
    matmul_unavailable,
    skinny_matmul_cpu,
    skinny_matmul_int8_cpu,
    transposed_matmul_unavailable,
    transposed_skinny_matmul_cpu,
)
from mmjax.kernels_cpu.skinny_matmul import build_in_background as build_matmul_in_background
from mmjax.kernels_cpu.zeroed_pages import build_in_background as build_zeroed_in_background
from mmjax.kernels_cpu.zeroed_pages import zeroed_arrays, zeroed_unavailable

__all__ = ["KernelBuildError", "bidirectional_attention_cpu", "build_in_background", "build_matmul_in_background",
           "build_zeroed_in_background",
           "few_rows_dot_general", "int8_matmul_unavailable", "kernel_cache_dir", "kernel_unavailable",
           "matmul_unavailable", "ragged_paged_attention_cpu", "skinny_matmul_cpu", "skinny_matmul_int8_cpu",
           "transposed_matmul_unavailable", "transposed_skinny_matmul_cpu", "zeroed_arrays", "zeroed_unavailable"]
