"""The decoder's few-row products on CPU: the native kernel beside XLA's dot and PyTorch, in one run.

A decode step multiplies one row per sequence by every weight, so it should
stream the weights at the machine's read bandwidth. For each row count
(1-32) and each product of the speed benchmark's decoder (``[M, 512]`` times
q/o ``[512, 512]``, gate/up ``[512, 1376]``, down ``[1376, 512]``, and the LM
head ``[512, 32064]``, and the tied LM head ``[32064, 512]`` read transposed, ``x @ E.T``, on
``transposed_skinny_matmul_cpu``; and larger decoders' projections ``[512, 1536]``,
``[512, 4096]``, ``[2048, 512]`` and ``[2560, 10240]``), enough distinct weight matrices
to fill 64 MB (past the 32 MB L3, as a decode step's layers are) are multiplied in one
jitted call; the figure is weight GB/s, best of ``--repeats``. The read bandwidth
(``jnp.sum`` over 256 MiB) is measured in the same run, and each figure is also
printed as a fraction of it. ``mmjax.kernels_cpu.skinny_matmul.MAX_ROWS`` and
``min_rows`` (the rows for which the engine uses the kernel) come from this table.

``--int8`` also multiplies by int8 weights with per-column float32 scales
(``skinny_matmul_int8_cpu``, 64 MB of int8 weights) against XLA's
``(x @ w.astype(x.dtype)) * scale``; GB/s there counts int8 bytes, and
``int8_over_kernel`` is the float kernel's time per product over the int8 kernel's.

    python benchmarks/skinny_matmul.py [--quick] [--dtype float32|bfloat16] [--only NAME ...] [--rows R ...]
                                       [--int8] [--no-torch]
"""

from __future__ import annotations

import argparse
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from mmjax.engine.compilation import compiler_options
from mmjax.kernels_cpu import (
    int8_matmul_unavailable,
    matmul_unavailable,
    skinny_matmul_cpu,
    skinny_matmul_int8_cpu,
    transposed_skinny_matmul_cpu,
)

#: name -> (K, N, transposed): w is [K, N], or [N, K] where transposed (y = x @ w.T, a tied LM head).
PRODUCTS = {"q_or_o": (512, 512, False), "gate_or_up": (512, 1376, False), "down": (1376, 512, False),
            "lm_head": (512, 32064, False), "tied_lm_head": (512, 32064, True),
            "w512x1536": (512, 1536, False), "w512x4096": (512, 4096, False), "w2048x512": (2048, 512, False),
            "w2560x10240": (2560, 10240, False)}
WEIGHT_BYTES = 64e6  # per product and dtype: past the benchmark host's 32 MB L3


def best_seconds(fn, repeats: int) -> float:
    jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="rows 1 and 8 only, fewer repeats")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--only", nargs="+", choices=tuple(PRODUCTS), help="these products only")
    parser.add_argument("--rows", nargs="+", type=int, help="these row counts only")
    parser.add_argument("--int8", action="store_true", help="int8 weights too (products with w [K, N])")
    parser.add_argument("--no-torch", action="store_true", help="leave PyTorch out")
    args = parser.parse_args()
    dtype = jnp.dtype(args.dtype)
    reason = int8_matmul_unavailable(dtype) if args.int8 else matmul_unavailable(dtype)
    if reason is not None:
        print(json.dumps({"skipped": f"the CPU matmul kernel cannot run here: {reason}"}))
        return
    repeats = 5 if args.quick else args.repeats
    rows_list = args.rows or ((1, 8) if args.quick else (1, 2, 4, 8, 12, 16, 32))
    big = jnp.ones(64 * 2**20, jnp.float32)
    read = jax.jit(jnp.sum)
    read_gb_per_s = big.nbytes / best_seconds(lambda: read(big), 10) / 1e9

    try:
        import torch
    except ImportError:
        torch = None
    if args.no_torch:
        torch = None
    rng = np.random.default_rng(0)
    xla = {False: jax.jit(lambda x, ws: [x @ w for w in ws], compiler_options=compiler_options()),
           True: jax.jit(lambda x, ws: [x @ w.T for w in ws], compiler_options=compiler_options())}
    kernel = {False: jax.jit(lambda x, ws: [skinny_matmul_cpu(x, w) for w in ws]),
              True: jax.jit(lambda x, ws: [transposed_skinny_matmul_cpu(x, w) for w in ws])}
    xla_int8 = jax.jit(lambda x, ws, ss: [((x @ w.astype(x.dtype)) * s).astype(x.dtype) for w, s in zip(ws, ss)],
                       compiler_options=compiler_options())
    kernel_int8 = jax.jit(lambda x, ws, ss: [skinny_matmul_int8_cpu(x, w, s) for w, s in zip(ws, ss)])
    table = {}
    for name, (k, n, transposed) in PRODUCTS.items():
        if args.only and name not in args.only:
            continue
        copies = max(1, int(WEIGHT_BYTES // (k * n * dtype.itemsize)))
        shape = (n, k) if transposed else (k, n)
        weights = [jnp.asarray(rng.standard_normal(shape, np.float32), dtype) for _ in range(copies)]
        to_torch = lambda w: torch.from_numpy(np.array(w, np.float32)).to(getattr(torch, args.dtype))  # noqa: E731
        torch_weights = [to_torch(w) if transposed else to_torch(w).T.contiguous()  # linear's [N, K]
                         for w in weights] if torch is not None else None
        gigabytes = copies * k * n * dtype.itemsize / 1e9
        if args.int8 and not transposed:
            int8_copies = max(1, int(WEIGHT_BYTES // (k * n)))
            int8_weights = [jnp.asarray(rng.integers(-127, 128, (k, n)), jnp.int8) for _ in range(int8_copies)]
            scales = [jnp.asarray(rng.uniform(1e-3, 2e-2, n), jnp.float32) for _ in range(int8_copies)]
            int8_gigabytes = int8_copies * k * n / 1e9
        for rows in rows_list:
            x = jnp.asarray(rng.standard_normal((rows, k), np.float32), dtype)
            entry = {"xla_gb_per_s": gigabytes / best_seconds(lambda: xla[transposed](x, weights), repeats),
                     "kernel_gb_per_s": gigabytes / best_seconds(lambda: kernel[transposed](x, weights), repeats)}
            if torch_weights is not None:
                tx = torch.from_numpy(np.array(x, np.float32)).to(getattr(torch, args.dtype))
                entry["torch_gb_per_s"] = gigabytes / best_seconds(
                    lambda: [torch.nn.functional.linear(tx, w) for w in torch_weights], repeats)
            entry["kernel_over_xla"] = entry["kernel_gb_per_s"] / entry["xla_gb_per_s"]
            entry["xla_fraction_of_read_bandwidth"] = entry["xla_gb_per_s"] / read_gb_per_s
            entry["kernel_fraction_of_read_bandwidth"] = entry["kernel_gb_per_s"] / read_gb_per_s
            if args.int8 and not transposed:
                entry["int8_xla_gb_per_s"] = int8_gigabytes / best_seconds(
                    lambda: xla_int8(x, int8_weights, scales), repeats)
                entry["int8_kernel_gb_per_s"] = int8_gigabytes / best_seconds(
                    lambda: kernel_int8(x, int8_weights, scales), repeats)
                entry["int8_kernel_over_xla"] = entry["int8_kernel_gb_per_s"] / entry["int8_xla_gb_per_s"]
                # seconds per product: the float kernel's over the int8 kernel's (weights of 4 or 2 times the bytes)
                entry["int8_over_kernel"] = entry["int8_kernel_gb_per_s"] * dtype.itemsize / entry["kernel_gb_per_s"]
                entry["int8_kernel_fraction_of_read_bandwidth"] = entry["int8_kernel_gb_per_s"] / read_gb_per_s
            product = f"[{rows}x{k}]x[{n}x{k}]^T" if transposed else f"[{rows}x{k}]x[{k}x{n}]"
            table[f"{name} {product}"] = {key: round(v, 2) for key, v in entry.items()}
    print(json.dumps({"dtype": args.dtype, "cpu_count": os.cpu_count(),
                      "read_gb_per_s": round(read_gb_per_s, 1), "weights_per_product_mb": round(WEIGHT_BYTES / 1e6),
                      "products": table}, indent=1))


if __name__ == "__main__":
    main()
