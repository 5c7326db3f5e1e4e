"""Two builds of the CPU skinny-matmul kernel side by side on a decode step's chain of products, interleaved.

The chain is a decode step's products of the LLaVA benchmark decoder (8 layers of q, k, v, o ``[512, 512]``,
gate and up ``[512, 1376]``, down ``[1376, 512]``, then the LM head ``[512, 32064]``; 83 MB in bfloat16), with
the residual adds between them, in one jitted program: the weights come from memory as in the engine (past
the 32 MB L3), and each product pays its call. The builds are compared round by round in one process (the
2-core host is noisy between processes); printed: each build's median and range of the chain's milliseconds
and its weight GB/s, the ratio to the first, and the largest difference of the outputs.

    python benchmarks/skinny_matmul_ab.py HEAD . [--rows 1,2,8] [--dtypes bfloat16,float32] [--rounds 15]

A build is a git revision (its ``mmjax/kernels_cpu/skinny_matmul.cc`` and headers) or ``.``, the working tree.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from cpu_attention_ab import source_dir  # noqa: E402
from mmjax.kernels_cpu.build import build_library  # noqa: E402

HIDDEN, INTERMEDIATE, VOCAB, LAYERS = 512, 1376, 32064, 8
_libraries = []  # kept alive: XLA calls into them


def kernel(name: str, directory: Path):
    library = ctypes.CDLL(str(build_library(directory / "skinny_matmul.cc", {})))
    jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(library.MmjaxSkinnyMatmul), platform="cpu")
    _libraries.append(library)
    return lambda x, w: jax.ffi.ffi_call(name, jax.ShapeDtypeStruct((x.shape[0], w.shape[1]), x.dtype))(x, w)


def chain(matmul):
    """x [M, D] through every layer's products (attention's mixing left out) and the LM head."""
    @jax.jit
    def run(x, layers, head):
        for q, k, v, o, gate, up, down in layers:
            x = x + matmul(matmul(x, q) + matmul(x, k) + matmul(x, v), o)
            x = x + matmul(matmul(x, gate) * matmul(x, up), down)
        return matmul(x, head)
    return run


def weights(dtype, seed: int = 0):
    rng = np.random.default_rng(seed)
    shapes = [(HIDDEN, HIDDEN)] * 4 + [(HIDDEN, INTERMEDIATE)] * 2 + [(INTERMEDIATE, HIDDEN)]
    layers = [[jnp.asarray(rng.standard_normal(s, np.float32) * 0.02, dtype) for s in shapes] for _ in range(LAYERS)]
    return layers, jnp.asarray(rng.standard_normal((HIDDEN, VOCAB), np.float32) * 0.02, dtype)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("revisions", nargs="+", help="git revisions, '.' for the working tree; the first is the base")
    parser.add_argument("--rows", default="1,2,8")
    parser.add_argument("--dtypes", default="bfloat16,float32")
    parser.add_argument("--rounds", type=int, default=15)
    flags = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="skinny-ab-"))
    runs = [chain(kernel(f"skinny_ab{i}", source_dir(rev, scratch / f"build{i}")))
            for i, rev in enumerate(flags.revisions)]
    report = []
    for dtype in map(jnp.dtype, flags.dtypes.split(",")):
        layers, head = weights(dtype)
        nbytes = sum(w.nbytes for layer in layers for w in layer) + head.nbytes
        for rows in map(int, flags.rows.split(",")):
            x = jnp.asarray(np.random.default_rng(1).standard_normal((rows, HIDDEN), np.float32), dtype)
            outs = [np.asarray(run(x, layers, head).astype(jnp.float32)) for run in runs]
            times = [[] for _ in runs]
            for _ in range(flags.rounds):
                for i, run in enumerate(runs):
                    best = float("inf")
                    for _ in range(5):
                        start = time.perf_counter()
                        run(x, layers, head).block_until_ready()
                        best = min(best, time.perf_counter() - start)
                    times[i].append(best)
            medians = [statistics.median(t) for t in times]
            report.append(dict(
                dtype=dtype.name, rows=rows, weight_mb=round(nbytes / 2**20, 1),
                builds={rev: dict(median_ms=round(1e3 * m, 3),
                                  range_ms=[round(1e3 * min(t), 3), round(1e3 * max(t), 3)],
                                  weight_gb_per_s=round(nbytes / m / 1e9, 1))
                        for rev, m, t in zip(flags.revisions, medians, times)},
                ratio_to_first=[round(m / medians[0], 3) for m in medians[1:]],
                max_abs_diff=max(float(np.max(np.abs(out - outs[0]))) for out in outs)))
            print(json.dumps(report[-1]), flush=True)


if __name__ == "__main__":
    main()
