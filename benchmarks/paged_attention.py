"""Paged attention figures, printed as one JSON object.

On every backend: the reference path (`ragged_paged_attention_reference`, the
test oracle) against a dense-attention baseline over the same K/V laid out
contiguously, same process, as ratios; and the CPU ("xla") path,
`ragged_paged_attention_tiled`, on one decode step of 8 sequences of 600
tokens in block tables 1k, 4k and 16k tokens wide (an engine's
``max_model_len``) beside the reference: its time must not grow with the width. On CPU also: the
native CPU kernel (``mmjax.kernels_cpu``, the default there) beside the XLA path and a dense
attention over contiguous K/V, for decode steps and a prefill step, with the kernel's K/V bytes
per second. On GPU/TPU also: the Pallas kernel's
achieved HBM bandwidth for decode (batch 1-64, context 512-32k) as a fraction of
the device's peak, beside `jax.experimental.pallas.ops` paged attention on the
same pages. On every backend, "windowed": each path (CPU: the native kernel and the XLA path;
GPU/TPU: the Pallas kernel) on decode and chunked-prefill steps over 2048-token contexts, with no
key bounds (the kernels' causal default), with causal bounds given as arrays (``key_end = position
+ 1``, what ``mmjax.attention.paged_attention`` passes for a layer without a window) and with a
sliding window of 256: the windowed time follows the window, not the context. What cannot run here
is listed under "skipped" with the reason.

    python benchmarks/paged_attention.py [--quick] [--dtype bfloat16] [--head-dim 64 --group 1]
    python benchmarks/paged_attention.py --kernel-only --dtype bfloat16 --head-dim 64 --group 1

``--dtype`` is the CPU kernel's (and its XLA peer's) dtype; ``--head-dim`` and ``--group`` replace the
Llama-3-like attention (``--head-dim 64 --group 1``: the LLaVA benchmark model's 8 heads of 64).
``--kernel-only`` prints only the CPU kernel beside the XLA path, for decode steps of 1 and 8 sequences of
630 and 2048 tokens and prefill steps of one 600-token and one 1024-token prompt.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from mmjax.kernels_cpu import kernel_unavailable, ragged_paged_attention_cpu
from mmjax.kernels_pallas import (
    ragged_paged_attention,
    ragged_paged_attention_reference,
    ragged_paged_attention_tiled,
)
from mmjax.kernels_pallas.ragged_paged_attention_tiled import DECODE_BLOCK_KV, DEFAULT_BLOCK_KV, DEFAULT_BLOCK_Q

# Peak HBM bandwidth (bytes/s) by device_kind prefix, from the vendors' data sheets.
PEAK_HBM = {
    "NVIDIA H100": 3.35e12, "NVIDIA H200": 4.8e12, "NVIDIA A100": 2.0e12, "NVIDIA B200": 8.0e12,
    "TPU v4": 1.2e12, "TPU v5 lite": 8.2e11, "TPU v5e": 8.2e11, "TPU v5p": 2.76e12, "TPU v5": 2.76e12,
    "TPU v6 lite": 1.64e12, "TPU v6e": 1.64e12,
}
NUM_KV_HEADS, GROUP, HEAD_DIM, PAGE_SIZE = 8, 4, 128, 16  # Llama-3-8B-like attention


def timeit(fn: Callable, *args, repeats: int = 5) -> float:
    """Median seconds of `repeats` calls after one compile-and-warm-up call."""
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def decode_inputs(batch: int, context: int, dtype, seed: int = 0, table_width: int | None = None,
                  consecutive: bool = False):
    """A decode step: every sequence has `context` tokens, its last one is the query.

    ``table_width``: pages per block table (null-padded past the context; default: just enough).
    ``consecutive``: each sequence's pages in order, as the engine's allocator reserves them (default:
    every page anywhere in the cache)."""
    rng = np.random.default_rng(seed)
    pages_per_seq = -(-context // PAGE_SIZE)
    num_pages = 1 + batch * pages_per_seq
    order = np.arange(batch * pages_per_seq) if consecutive else rng.permutation(batch * pages_per_seq)
    tables = (1 + order).reshape(batch, pages_per_seq).astype(np.int32)
    if table_width is not None:
        tables = np.pad(tables, ((0, 0), (0, table_width - pages_per_seq)))
    key = jax.random.key(seed)
    shape = (NUM_KV_HEADS, num_pages, PAGE_SIZE, HEAD_DIM)
    k_pages = jax.random.normal(jax.random.fold_in(key, 1), shape, dtype)
    v_pages = jax.random.normal(jax.random.fold_in(key, 2), shape, dtype)
    q = jax.random.normal(jax.random.fold_in(key, 3), (batch, NUM_KV_HEADS * GROUP, HEAD_DIM), dtype)
    kv_lens = jnp.full((batch,), context, jnp.int32)
    cu_q_lens = jnp.arange(batch + 1, dtype=jnp.int32)
    return q, k_pages, v_pages, kv_lens, jnp.asarray(tables), cu_q_lens, jnp.array([batch], jnp.int32)


@jax.jit
def dense_decode(q, k, v, kv_lens):
    """Baseline: contiguous ``k, v [B, S, K, H]``, one query per sequence."""
    batch, num_heads, head_dim = q.shape
    qg = q.reshape(batch, NUM_KV_HEADS, num_heads // NUM_KV_HEADS, head_dim).astype(jnp.float32)
    logits = jnp.einsum("BKRH,BSKH->BKRS", qg, k.astype(jnp.float32)) / np.sqrt(head_dim)
    mask = jnp.arange(k.shape[1])[None, :] < kv_lens[:, None]
    p = jax.nn.softmax(jnp.where(mask[:, None, None], logits, -jnp.inf), axis=-1)
    return jnp.einsum("BKRS,BSKH->BKRH", p, v.astype(jnp.float32)).reshape(q.shape).astype(q.dtype)


def reference_vs_dense(shapes: list[tuple[int, int]], dtype) -> list[dict]:
    rows = []
    for batch, context in shapes:
        args = decode_inputs(batch, context, dtype)
        q, k_pages, v_pages, kv_lens, tables = args[:5]
        contiguous = lambda p: p[:, tables].reshape(NUM_KV_HEADS, batch, -1, HEAD_DIM).transpose(1, 2, 0, 3)
        k, v = contiguous(k_pages), contiguous(v_pages)
        t_ref = timeit(lambda *a: ragged_paged_attention_reference(*a, max_q_len=1), *args)
        t_dense = timeit(dense_decode, q, k, v, kv_lens)
        err = float(jnp.max(jnp.abs(ragged_paged_attention_reference(*args, max_q_len=1).astype(jnp.float32)
                                    - dense_decode(q, k, v, kv_lens).astype(jnp.float32))))
        rows.append(dict(batch=batch, context=context, dtype=jnp.dtype(dtype).name,
                         reference_ms=1e3 * t_ref, dense_ms=1e3 * t_dense,
                         reference_over_dense=t_ref / t_dense, max_abs_diff=err))
    return rows


def xla_path_vs_table_width(widths_tokens: list[int], dtype, batch: int = 8, context: int = 600) -> list[dict]:
    """The CPU path and the reference on one decode step, as the block tables widen."""
    rows = []
    for width in widths_tokens:
        args = decode_inputs(batch, context, dtype, table_width=width // PAGE_SIZE)
        t_xla = timeit(lambda *a: ragged_paged_attention_tiled(*a, block_q=1), *args)
        t_ref = timeit(lambda *a: ragged_paged_attention_reference(*a, max_q_len=1), *args)
        rows.append(dict(batch=batch, context=context, table_width_tokens=width, xla_path_ms=1e3 * t_xla,
                         reference_ms=1e3 * t_ref))
    return rows


def prefill_inputs(batch: int, prompt: int, dtype, seed: int = 0):
    """A prefill step: `batch` new prompts of `prompt` tokens each, packed."""
    q, k_pages, v_pages, _, tables, _, num_seqs = decode_inputs(batch, prompt, dtype, seed, consecutive=True)
    q = jax.random.normal(jax.random.key(seed + 7), (batch * prompt, NUM_KV_HEADS * GROUP, HEAD_DIM), dtype)
    kv_lens = jnp.full((batch,), prompt, jnp.int32)
    cu_q_lens = jnp.arange(batch + 1, dtype=jnp.int32) * prompt
    return q, k_pages, v_pages, kv_lens, tables, cu_q_lens, num_seqs


def cpu_kernel_vs_xla(decode_shapes: list[tuple[int, int]], prefills: list[tuple[int, int]], dtype) -> list[dict]:
    """The native CPU kernel beside the plain-XLA path on the same pages (and dense attention for decode);
    decode with each sequence's pages in order (as the allocator reserves them) and in random order.
    ``kernel_kv_gb_per_s``: the K/V bytes of the step over the kernel's time (a prefill reads them more than once)."""
    rows = []
    cases = [("decode", order, b, c, lambda b=b, c=c, order=order: decode_inputs(
        b, c, dtype, consecutive=order == "consecutive"))
        for b, c in decode_shapes for order in ("consecutive", "random")]
    cases += [("prefill", "consecutive", b, p, lambda b=b, p=p: prefill_inputs(b, p, dtype)) for b, p in prefills]
    for kind, order, batch, context, make in cases:
        args = make()
        q, k_pages, v_pages, kv_lens, tables = args[:5]
        block_q = 1 if kind == "decode" else 128
        t_kernel = timeit(ragged_paged_attention_cpu, *args)
        t_xla = timeit(lambda *a: ragged_paged_attention_tiled(*a, block_q=block_q), *args)
        err = float(jnp.max(jnp.abs(ragged_paged_attention_cpu(*args).astype(jnp.float32)
                                    - ragged_paged_attention_tiled(*args, block_q=block_q).astype(jnp.float32))))
        kv_bytes = 2 * batch * context * NUM_KV_HEADS * HEAD_DIM * jnp.dtype(dtype).itemsize
        row = dict(step=kind, pages=order, batch=batch, context=context, dtype=jnp.dtype(dtype).name,
                   cpu_kernel_ms=1e3 * t_kernel,
                   xla_path_ms=1e3 * t_xla,
                   xla_over_kernel=t_xla / t_kernel, kernel_kv_gb_per_s=kv_bytes / t_kernel / 1e9, max_abs_diff=err)
        if kind == "decode":
            contiguous = lambda p: p[:, tables].reshape(NUM_KV_HEADS, batch, -1, HEAD_DIM).transpose(1, 2, 0, 3)
            k, v = contiguous(k_pages), contiguous(v_pages)
            row["dense_contiguous_ms"] = 1e3 * timeit(dense_decode, q, k, v, kv_lens)
        rows.append(row)
    return rows


def chunk_inputs(batch: int, context: int, q_len: int, dtype, seed: int = 0):
    """A step whose `batch` sequences hold `context` tokens, the last `q_len` of them this step's queries
    (q_len 1: decode; more: a prefill chunk that starts mid-context). Pages in random order."""
    q, k_pages, v_pages, kv_lens, tables, _, num_seqs = decode_inputs(batch, context, dtype, seed)
    q = jax.random.normal(jax.random.key(seed + 7), (batch * q_len, NUM_KV_HEADS * GROUP, HEAD_DIM), dtype)
    cu_q_lens = jnp.arange(batch + 1, dtype=jnp.int32) * q_len
    positions = np.tile(np.arange(context - q_len, context), batch).astype(np.int32)
    return (q, k_pages, v_pages, kv_lens, tables, cu_q_lens, num_seqs), positions


def key_bounds(positions: np.ndarray, bounds: str, window: int) -> dict:
    """No arrays ("none": the kernels' causal default), causal ones ("causal": key_end = position + 1, as
    paged_attention passes for a full-attention layer) or a sliding window ("window")."""
    if bounds == "none":
        return {}
    key_end = jnp.asarray(positions + 1)
    return dict(key_end=key_end) if bounds == "causal" else dict(
        key_start=jnp.asarray(np.maximum(positions - window + 1, 0)), key_end=key_end)


def windowed(paths: dict[str, Callable], steps: list[tuple[str, int, int, int]], dtype,
             window: int = 256) -> list[dict]:
    """Each path's time on each step (kind, batch, context, q_len) with no bounds, causal bounds, a window."""
    rows = []
    for kind, batch, context, q_len in steps:
        args, positions = chunk_inputs(batch, context, q_len, dtype)
        for bounds in ("none", "causal", "window"):
            row = dict(step=kind, batch=batch, context=context, q_len=q_len, bounds=bounds,
                       window=window if bounds == "window" else None)
            kwargs = key_bounds(positions, bounds, window)
            for name, path in paths.items():
                row[f"{name}_ms"] = 1e3 * timeit(lambda *a, p=path, kind=kind: p(kind, *a, **kwargs), *args)
            rows.append(row)
    return rows


def xla_path(kind: str, *args, **kwargs):
    """The XLA path with the block sizes ``paged_attention`` picks for the step."""
    decode = kind == "decode"
    return ragged_paged_attention_tiled(*args, **kwargs, block_q=1 if decode else DEFAULT_BLOCK_Q,
                                        block_kv=DECODE_BLOCK_KV if decode else DEFAULT_BLOCK_KV)


def jax_peer(backend: str) -> Callable:
    """`jax.experimental.pallas.ops` paged attention on the same ``[K, A, G, H]`` pages."""
    if backend == "gpu":
        from jax.experimental.pallas.ops.gpu.paged_attention import paged_attention as peer
        return jax.jit(lambda q, k, v, lens, tables: peer(q, k, v, tables, lens, k_splits=1))
    from jax.experimental.pallas.ops.tpu.paged_attention import paged_attention as peer
    return jax.jit(lambda q, k, v, lens, tables: peer(q, k, v, lens, tables, pages_per_compute_block=8))


def kernel_bandwidth(backend: str, batches, contexts, dtype) -> tuple[list[dict], float | None]:
    kind = jax.devices()[0].device_kind
    peak = next((bw for name, bw in PEAK_HBM.items() if kind.startswith(name)), None)
    ours = jax.jit(lambda *a: ragged_paged_attention(*a, backend=backend, max_q_len=1))
    peer = jax_peer(backend)
    rows = []
    for batch in batches:
        for context in contexts:
            args = decode_inputs(batch, context, dtype)
            q, k_pages, v_pages, kv_lens, tables = args[:5]
            kv_bytes = 2 * batch * context * NUM_KV_HEADS * HEAD_DIM * jnp.dtype(dtype).itemsize
            row = dict(batch=batch, context=context, kv_bytes=kv_bytes)
            peer_args = (q, k_pages, v_pages, kv_lens, tables)
            for name, fn, fargs in (("mmjax", ours, args), ("jax_pallas_ops", peer, peer_args)):
                try:
                    seconds = timeit(fn, *fargs)
                    row[f"{name}_ms"] = 1e3 * seconds
                    row[f"{name}_hbm_fraction"] = None if peak is None else kv_bytes / seconds / peak
                except Exception as e:  # a peer's shape limits must not hide our figures
                    row[f"{name}_error"] = f"{type(e).__name__}: {str(e)[:200]}"
            rows.append(row)
            del args, q, k_pages, v_pages
    return rows, peak


def main() -> None:
    global HEAD_DIM, GROUP  # the shapes every case above uses
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewest shapes (CI smoke run)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                        help="the CPU kernel's dtype (and the XLA path's beside it)")
    parser.add_argument("--head-dim", type=int, default=HEAD_DIM)
    parser.add_argument("--group", type=int, default=GROUP, help="query heads per KV head")
    parser.add_argument("--kernel-only", action="store_true", help="only the CPU kernel beside the XLA path")
    flags = parser.parse_args()
    HEAD_DIM, GROUP = flags.head_dim, flags.group
    dtype = jnp.dtype(flags.dtype)
    backend = jax.default_backend()
    report: dict = dict(jax=jax.__version__, backend=backend, device=jax.devices()[0].device_kind,
                        attention=dict(num_kv_heads=NUM_KV_HEADS, group=GROUP, head_dim=HEAD_DIM,
                                       page_size=PAGE_SIZE), skipped={})
    on_cpu = backend not in ("gpu", "tpu")
    if flags.kernel_only:
        reason = kernel_unavailable(HEAD_DIM, dtype) if on_cpu else f"no CPU kernel on {backend}"
        if reason is None:
            report["cpu_kernel_vs_xla_path"] = cpu_kernel_vs_xla(
                [(1, 630), (1, 2048), (8, 630), (8, 2048)], [(1, 600), (1, 1024)], dtype)
        else:
            report["skipped"]["cpu_kernel"] = reason
        print(json.dumps(report, indent=1))
        return
    shapes = [(1, 512), (8, 2048)] if flags.quick or on_cpu else [(1, 512), (8, 2048), (64, 4096)]
    report["reference_vs_dense_decode"] = reference_vs_dense(shapes, jnp.float32 if on_cpu else jnp.bfloat16)
    report["xla_path_decode_vs_table_width"] = xla_path_vs_table_width(
        [1024, 4096] if flags.quick else [1024, 4096, 16384], jnp.float32)
    if on_cpu:
        reason = kernel_unavailable(HEAD_DIM, dtype)
        if reason is None:
            report["cpu_kernel_vs_xla_path"] = cpu_kernel_vs_xla(
                [(1, 512), (8, 600)] if flags.quick else [(1, 512), (8, 600), (8, 2048)], [(4, 512)], dtype)
        else:
            report["skipped"]["cpu_kernel"] = reason
        steps = [("decode", 8, 2048, 1), ("prefill_chunk", 2, 2048, 512)]
        paths = {"xla_path": xla_path}
        if reason is None:
            paths["cpu_kernel"] = lambda kind, *a, **k: ragged_paged_attention_cpu(*a, **k)
        report["windowed"] = windowed(paths, steps, dtype)
        report["skipped"]["kernel_bandwidth"] = (
            f"no GPU/TPU (jax.default_backend() == {backend!r}); the kernels run here only in "
            "interpret mode, whose timings say nothing about the hardware")
    else:
        batches, contexts = ([1, 64], [512, 32768]) if flags.quick else ([1, 8, 64], [512, 4096, 32768])
        rows, peak = kernel_bandwidth(backend, batches, contexts, jnp.bfloat16)
        report["peak_hbm_bytes_per_s"] = peak
        report["kernel_decode_bandwidth"] = rows
        steps = [("decode", 8, 2048, 1), ("decode", 8, 32768, 1), ("prefill_chunk", 2, 2048, 512)]
        report["windowed"] = windowed({"pallas": lambda kind, *a, **k: ragged_paged_attention(
            *a, **k, backend=backend, max_q_len=1 if kind == "decode" else None)}, steps, jnp.bfloat16)
        if peak is None:
            report["skipped"]["hbm_fraction"] = f"peak bandwidth of {report['device']!r} not in the table"
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
