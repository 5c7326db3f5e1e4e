"""Vision towers' attention on the native CPU kernel, inside the engine's encoder programs.

A vision tower's attention (every row of an image attending all of its rows) runs as XLA's batched
products by default: training differentiates through it, and meshes and accelerators keep it. The
engine's encoder programs on one CPU device trace the tower inside ``native_attention_on_cpu()``, and
there a tower that asks ``bidirectional_attention`` gets the CPU attention kernel's result
(``mmjax.kernels_cpu.bidirectional_attention_cpu``: bfloat16 tiles on AMX where the CPU has them).
Measured on the LLaVA benchmark's CLIP tower (256 wide, 8 heads of 32, 577 rows, 4 layers; 2-core Xeon
host, one image): bfloat16 21.8 -> 13.5 ms, float32 28.2 -> 23.6 ms.
"""

from __future__ import annotations

import contextlib

from mmjax.kernels_cpu import bidirectional_attention_cpu, kernel_unavailable
from mmjax.models.common.trace_flag import TraceFlag
from mmjax.types import Array, Float

_VISION_ATTENTION_ON_CPU = TraceFlag("mmjax_vision_attention_on_cpu")


def native_attention_on_cpu() -> contextlib.AbstractContextManager[None]:
    """Within this block (while tracing), ``bidirectional_attention`` runs on the CPU kernel where it can."""
    return _VISION_ATTENTION_ON_CPU.on()


def bidirectional_attention(q: Float[Array, "I P N H"], k: Float[Array, "I P N H"], v: Float[Array, "I P N H"],
                            sm_scale: float) -> Float[Array, "I P N H"] | None:
    """Softmax attention of each image's rows over all of its rows, on the CPU kernel inside
    ``native_attention_on_cpu()`` where the kernel serves this head dim and dtype; None elsewhere (the
    caller computes it with XLA)."""
    if not _VISION_ATTENTION_ON_CPU.is_on() or q.dtype != k.dtype or q.dtype != v.dtype:
        return None
    if kernel_unavailable(q.shape[-1], q.dtype) is not None:
        return None
    return bidirectional_attention_cpu(q, k, v, sm_scale=sm_scale)
