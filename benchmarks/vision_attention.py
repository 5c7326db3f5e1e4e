"""The vision towers' segment attention: dense vs blockwise vs banded, time and compiled memory, on this machine.

For each bucket ``P`` and layout, each implementation is jitted on random
``q, k, v [P, N, H]`` (Qwen2.5-VL's tower: 16 heads of 80) and timed (best of
``--repeats``); ``temp_mb`` is the compiled program's temporary memory
(``memory_analysis().temp_size_in_bytes``), for the forward and, with
``--grad``, for ``jax.grad`` of a weighted sum. A program whose temporaries
exceed ``--max-run-gb`` is compiled but not run (dense at 16384 rows: ~17 GB).

Layouts come from Qwen2.5-VL's real host layout (``windowed_vision_layout``,
112-px windows of 14-px patches: runs of at most 64 rows):

- ``image_full``: one image nearly filling the bucket, one segment (full-attention layers, nothing to skip);
- ``video_full``: frames of 24 x 24 patches, one segment per frame (full attention; far key blocks skipped);
- ``image_windowed``: the same image's windows (the windowed layers).

``DENSE_MAX_ROWS``, ``FLASH_BLOCK``, ``BANDED_CHUNK_ROWS`` and ``banded_min_rows`` in
``mmjax.models.common.segment_attention`` come from this table.

    python benchmarks/vision_attention.py [--rows 1024 4096 16384] [--flash-blocks 256 512 1024] [--grad]
"""

from __future__ import annotations

import argparse
import json
import math
import time

import jax
import jax.numpy as jnp
import numpy as np

from mmjax.models.common.segment_attention import (
    BANDED_CHUNK_ROWS, FLASH_BLOCK, attention_kind, dense_segment_attention, segment_mask,
)  # fmt: skip
from mmjax.models.common.segment_attention_banded import banded_segment_attention
from mmjax.models.common.segment_attention_blockwise import blockwise_segment_attention
from mmjax.models.qwen2_5_vl.vision_layout import windowed_vision_layout

WINDOW, PATCH, MERGE = 112, 14, 2
MAX_RUN = (WINDOW // PATCH) ** 2  # rows of a full window: (units_per_window * merge) ** 2
FRAME_SIDE = 24


def layouts(rows: int) -> dict[str, tuple[np.ndarray, np.ndarray, int | None]]:
    """``name -> (segment ids, valid, max_run)`` for a bucket of ``rows``."""
    side = max(2, (math.isqrt(rows) - 2) // 2 * 2)  # a little padding; partial windows at the edges
    image = windowed_vision_layout([(1, side, side)], rows, merge=MERGE, window_size=WINDOW, patch_size=PATCH)
    frames = max(1, rows // FRAME_SIDE**2)
    video = windowed_vision_layout([(frames, FRAME_SIDE, FRAME_SIDE)], max(rows, FRAME_SIDE**2), merge=MERGE,
                                   window_size=WINDOW, patch_size=PATCH)
    return {
        "image_full": (image.frame_segments, image.valid, None),
        "video_full": (video.frame_segments[:rows], video.valid[:rows], None),
        "image_windowed": (image.window_segments, image.valid, MAX_RUN),
    }


def implementations(max_run: int | None, flash_blocks: list[int], chunks: list[int]) -> dict:
    """``name -> fn(q, k, v, ids, valid)``."""
    impls = {"dense": lambda q, k, v, s, m: dense_segment_attention(q, k, v, segment_mask(s, m))}
    for block in flash_blocks:
        impls[f"blockwise_{block}"] = lambda q, k, v, s, m, b=block: blockwise_segment_attention(q, k, v, s, m,
                                                                                               block=b)
    if max_run is not None:
        for rows in chunks:
            impls[f"banded_chunk{rows}"] = lambda q, k, v, s, m, c=rows: banded_segment_attention(
                q, k, v, s, m, block=max_run, chunk=max(1, c // max_run))
    return impls


def picked(rows: int, max_run: int | None) -> str:
    """The name (as in ``implementations``) of what ``segment_attention`` runs here."""
    names = {"dense": "dense", "blockwise": f"blockwise_{FLASH_BLOCK}", "banded": f"banded_chunk{BANDED_CHUNK_ROWS}"}
    return names[attention_kind(rows, max_run)]


def temp_mb(compiled) -> float:
    return compiled.memory_analysis().temp_size_in_bytes / 2**20


def best_seconds(fn, args, repeats: int, budget_s: float = 60.0) -> float:
    """Best of ``repeats`` timed calls after a warm-up, fewer once ``budget_s`` is spent (16384 rows: ~35 s each)."""
    jax.block_until_ready(fn(*args))
    times = []
    while len(times) < repeats and sum(times) < budget_s:
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return min(times)


def measure(fn, args, *, repeats: int, max_run_gb: float, grad: bool, time_grad: bool) -> dict:
    """``temp_mb`` and ``ms`` of the forward (``ms`` None: not run, over ``max_run_gb``); likewise ``grad_*``."""
    forward = jax.jit(fn).lower(*args).compile()
    result = {"temp_mb": round(temp_mb(forward), 1), "ms": None}
    if result["temp_mb"] <= max_run_gb * 1024:
        result["ms"] = round(best_seconds(forward, args, repeats) * 1e3, 2)
    if grad:
        weights = jnp.ones_like(args[0])
        loss = lambda q, k, v, s, m: jnp.sum(fn(q, k, v, s, m) * weights)  # noqa: E731
        backward = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(*args).compile()
        result["grad_temp_mb"], result["grad_ms"] = round(temp_mb(backward), 1), None
        if time_grad and result["grad_temp_mb"] <= max_run_gb * 1024:
            result["grad_ms"] = round(best_seconds(backward, args, repeats) * 1e3, 2)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1024, 4096, 16384])
    parser.add_argument("--layouts", nargs="+", default=["image_full", "video_full", "image_windowed"])
    parser.add_argument("--only", nargs="+", help="implementation names to run (default: all)")
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--head-dim", type=int, default=80)
    parser.add_argument("--flash-blocks", type=int, nargs="+", default=[FLASH_BLOCK])
    parser.add_argument("--banded-chunks", type=int, nargs="+", default=[BANDED_CHUNK_ROWS],
                        help="query rows per step of the banded attention")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-run-gb", type=float, default=4.0)
    parser.add_argument("--grad", action="store_true", help="also compile (and time) jax.grad")
    parser.add_argument("--grad-max-rows", type=int, default=4096, help="time jax.grad up to this bucket only")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    results = []
    for rows in args.rows:
        q, k, v = (jnp.asarray(rng.normal(size=(rows, args.heads, args.head_dim)), jnp.float32) for _ in range(3))
        for name, (ids, valid, max_run) in layouts(rows).items():
            if name not in args.layouts:
                continue
            operands = (q, k, v, jnp.asarray(ids), jnp.asarray(valid))
            for impl, fn in implementations(max_run, args.flash_blocks, args.banded_chunks).items():
                if args.only and impl not in args.only:
                    continue
                row = {"rows": rows, "layout": name, "impl": impl, "picked": impl == picked(rows, max_run)}
                row.update(measure(fn, operands, repeats=args.repeats, max_run_gb=args.max_run_gb, grad=args.grad,
                                   time_grad=rows <= args.grad_max_rows))
                results.append(row)
                print(json.dumps(row), flush=True)
    print(json.dumps({"device": jax.devices()[0].device_kind, "heads": args.heads, "head_dim": args.head_dim,
                      "results": results}))


if __name__ == "__main__":
    main()
