"""The decoder's few-row products on CPU: the native kernel beside XLA's dot and PyTorch, in one run.

A decode step multiplies one row per sequence by every weight, so it should
stream the weights at the machine's read bandwidth. For each row count
(1-32) and each product of the speed benchmark's decoder (``[M, 512]`` times
q/o ``[512, 512]``, gate/up ``[512, 1376]``, down ``[1376, 512]``, and the LM
head ``[512, 32064]``, and the tied LM head ``[32064, 512]`` read transposed, ``x @ E.T``, on
``transposed_skinny_matmul_cpu``), enough distinct weight matrices to fill 64 MB (past
the caches, as a decode step's 8 layers are) are multiplied in one jitted
call; the figure is weight GB/s, best of ``--repeats``. The read bandwidth
(``jnp.sum`` over 256 MiB) is measured in the same run, and each figure is also
printed as a fraction of it. ``mmjax.kernels_cpu.skinny_matmul.MAX_ROWS`` (up
to which the engine uses the kernel) comes from this table.

    python benchmarks/skinny_matmul.py [--quick] [--dtype float32|bfloat16] [--only NAME ...]
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
from mmjax.kernels_cpu import matmul_unavailable, skinny_matmul_cpu, transposed_skinny_matmul_cpu

#: name -> (K, N, transposed): w is [K, N], or [N, K] where transposed (y = x @ w.T, a tied LM head).
PRODUCTS = {"q_or_o": (512, 512, False), "gate_or_up": (512, 1376, False), "down": (1376, 512, False),
            "lm_head": (512, 32064, False), "tied_lm_head": (512, 32064, True)}


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
    args = parser.parse_args()
    dtype = jnp.dtype(args.dtype)
    reason = matmul_unavailable(dtype)
    if reason is not None:
        print(json.dumps({"skipped": f"the CPU matmul kernel cannot run here: {reason}"}))
        return
    repeats = 5 if args.quick else args.repeats
    rows_list = (1, 8) if args.quick else (1, 2, 4, 8, 12, 16, 32)
    big = jnp.ones(64 * 2**20, jnp.float32)
    read = jax.jit(jnp.sum)
    read_gb_per_s = big.nbytes / best_seconds(lambda: read(big), 10) / 1e9

    try:
        import torch
    except ImportError:
        torch = None
    rng = np.random.default_rng(0)
    xla = {False: jax.jit(lambda x, ws: [x @ w for w in ws], compiler_options=compiler_options()),
           True: jax.jit(lambda x, ws: [x @ w.T for w in ws], compiler_options=compiler_options())}
    kernel = {False: jax.jit(lambda x, ws: [skinny_matmul_cpu(x, w) for w in ws]),
              True: jax.jit(lambda x, ws: [transposed_skinny_matmul_cpu(x, w) for w in ws])}
    table = {}
    for name, (k, n, transposed) in PRODUCTS.items():
        if args.only and name not in args.only:
            continue
        copies = max(1, int(64e6 // (k * n * 4)))
        shape = (n, k) if transposed else (k, n)
        weights = [jnp.asarray(rng.standard_normal(shape, np.float32), dtype) for _ in range(copies)]
        to_torch = lambda w: torch.from_numpy(np.array(w, np.float32)).to(getattr(torch, args.dtype))  # noqa: E731
        torch_weights = [to_torch(w) if transposed else to_torch(w).T.contiguous()  # linear's [N, K]
                         for w in weights] if torch is not None else None
        gigabytes = copies * k * n * dtype.itemsize / 1e9
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
            product = f"[{rows}x{k}]x[{n}x{k}]^T" if transposed else f"[{rows}x{k}]x[{k}x{n}]"
            table[f"{name} {product}"] = {key: round(v, 2) for key, v in entry.items()}
    print(json.dumps({"dtype": args.dtype, "cpu_count": os.cpu_count(),
                      "read_gb_per_s": round(read_gb_per_s, 1), "weights_per_product_mb": 64,
                      "products": table}, indent=1))


if __name__ == "__main__":
    main()
