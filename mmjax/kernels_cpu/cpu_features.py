"""What this CPU is and which of its instructions decide how mmjax multiplies on it (read once per process).

``cpu_identity`` names the model and feature flags (what ``-march=native`` builds for, and part of the
keys of the kernel builds and the stored programs). ``multiplies_bfloat16_in_tiles`` says whether the CPU
has AMX with bfloat16 (Intel Sapphire Rapids and later): there XLA's YNNPACK dots multiply bfloat16
operands into a float32 result on the tile unit, 5-6x faster than float32 products (``[2048, 512] @
[512, 1376]`` on the 2-core Xeon host: 1.7 TFLOP/s against 0.29, ``benchmarks/prefill_matmul.py``), so
the linear-layer policy keeps bfloat16 operands there; elsewhere (AVX-512 BF16 without AMX, as on the
AMD host) float32 products were measured fastest.
"""

from __future__ import annotations

import functools
import platform
from pathlib import Path

_CPUINFO = Path("/proc/cpuinfo")


@functools.cache
def cpu_identity() -> str:
    """The CPU's model name and feature flags, one sorted line each (the machine's name where unreadable)."""
    try:
        lines = _CPUINFO.read_text().splitlines()
    except OSError:
        return platform.processor() or platform.machine()
    keep = [line for line in lines if line.split(":")[0].strip() in ("model name", "flags", "Features", "CPU part")]
    return "\n".join(sorted(set(keep)))


@functools.cache
def multiplies_bfloat16_in_tiles() -> bool:
    """Whether this CPU has AMX tiles with bfloat16 products (the ``amx_bf16`` and ``amx_tile`` flags)."""
    flags = set()
    for line in cpu_identity().splitlines():
        name, _, value = line.partition(":")
        if name.strip() == "flags":
            flags.update(value.split())
    return {"amx_bf16", "amx_tile"} <= flags
