"""Two builds of the CPU attention kernel side by side, interleaved in one process: a change's before/after.

The 2-core benchmark host is shared and noisy (the same call varies 2x between processes), so the
builds are compared round by round on the same inputs, and each case prints every build's median
and range over the rounds, its ratio to the first build and its K/V GB/s. A build is a git revision
(its ``mmjax/kernels_cpu/ragged_paged_attention.cc`` and headers) or ``.`` for the working tree.

    python benchmarks/cpu_attention_ab.py 4a9798a . [--rounds 7] [--heads 64g1,128g1]
        [--decode 1x630,8x2048] [--prefill 600,1024] [--orders random,consecutive] [--dtypes bfloat16]

Cases: decode steps (``BxC``: B sequences of C tokens, one query each) and one-prompt prefill steps,
8 KV heads of ``--heads`` (``64g1``: head dim 64, one query head per KV head), 16-token pages.
"""

from __future__ import annotations

import argparse
import ctypes
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from mmjax.kernels_cpu.build import build_library

REPO = Path(__file__).resolve().parent.parent
KERNELS = "mmjax/kernels_cpu"
PAGE, KV_HEADS = 16, 8
_libraries = []  # kept alive: XLA calls into them


def source_dir(revision: str, into: Path) -> Path:
    """A directory with the kernel's source and headers at `revision` (``.``: the working tree)."""
    if revision == ".":
        return REPO / KERNELS
    files = subprocess.run(["git", "-C", str(REPO), "ls-tree", "--name-only", f"{revision}:{KERNELS}"],
                           capture_output=True, text=True, check=True).stdout.split()
    into.mkdir(parents=True)
    for name in files:
        if name.endswith((".cc", ".h")):
            text = subprocess.run(["git", "-C", str(REPO), "show", f"{revision}:{KERNELS}/{name}"],
                                  capture_output=True, text=True, check=True).stdout
            (into / name).write_text(text)
    return into


def kernel(name: str, directory: Path, head_dim: int):
    library = ctypes.CDLL(str(build_library(directory / "ragged_paged_attention.cc", {"MMJAX_HEAD_DIM": head_dim})))
    jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(library.MmjaxRaggedPagedAttention), platform="cpu")
    _libraries.append(library)

    @jax.jit
    def call(q, k, v, lens, tables, cu, num_seqs):
        empty = jnp.zeros((0,), jnp.int32)
        out = jax.ShapeDtypeStruct(q.shape, q.dtype)
        return jax.ffi.ffi_call(name, out)(q, k, v, lens, tables, cu, num_seqs, empty, empty,
                                           sm_scale=np.float32(1 / np.sqrt(head_dim)))
    return call


def inputs(kind: str, batch: int, context: int, group: int, head_dim: int, dtype, order: str, seed: int = 0):
    rng = np.random.default_rng(seed)
    pages_per_seq = -(-context // PAGE)
    pages = rng.permutation(batch * pages_per_seq) if order == "random" else np.arange(batch * pages_per_seq)
    tables = (1 + pages).reshape(batch, pages_per_seq).astype(np.int32)
    shape = (KV_HEADS, 1 + batch * pages_per_seq, PAGE, head_dim)
    k = jnp.asarray(rng.standard_normal(shape, np.float32), dtype)
    v = jnp.asarray(rng.standard_normal(shape, np.float32), dtype)
    q_len = 1 if kind == "decode" else context
    q = jnp.asarray(rng.standard_normal((batch * q_len, KV_HEADS * group, head_dim), np.float32), dtype)
    return (q, k, v, jnp.full((batch,), context, jnp.int32), jnp.asarray(tables),
            jnp.arange(batch + 1, dtype=jnp.int32) * q_len, jnp.array([batch], jnp.int32))


def seconds(fn, args) -> float:
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("revisions", nargs="+", help="git revisions, '.' for the working tree; the first is the base")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--heads", default="64g1,128g1", help="head dim 'g' query heads per KV head, comma-separated")
    parser.add_argument("--decode", default="1x630,1x2048,8x630,8x2048")
    parser.add_argument("--prefill", default="600,1024")
    parser.add_argument("--orders", default="random,consecutive", help="decode pages in random order, in order")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    flags = parser.parse_args()
    heads = [tuple(map(int, spec.split("g"))) for spec in flags.heads.split(",")]
    scratch = Path(tempfile.mkdtemp(prefix="cpu-attention-ab-"))
    dirs = [source_dir(rev, scratch / f"build{i}") for i, rev in enumerate(flags.revisions)]
    calls = {(i, h): kernel(f"ab{i}_h{h}", d, h) for i, d in enumerate(dirs) for h in {h for h, _ in heads}}
    cases = [("decode", int(b), int(c), h, g, order) for h, g in heads for b, c in
             (spec.split("x") for spec in flags.decode.split(",") if spec) for order in flags.orders.split(",")]
    cases += [("prefill", 1, int(c), h, g, "consecutive") for h, g in heads for c in flags.prefill.split(",") if c]
    print("case".ljust(38), "dtype".ljust(9), " ".join(f"{rev[:10] + ' ms (range)':26s}" for rev in flags.revisions),
          "ratio  GB/s  max|diff|")
    for kind, batch, context, head_dim, group, order in cases:
        for dtype in map(jnp.dtype, flags.dtypes.split(",")):
            args = inputs(kind, batch, context, group, head_dim, dtype, order)
            fns = [calls[i, head_dim] for i in range(len(dirs))]
            outs = [np.asarray(fn(*args).astype(jnp.float32)) for fn in fns]
            diff = max(float(np.max(np.abs(out - outs[0]))) for out in outs)
            reps = 3 if kind == "prefill" else 30 if batch * context < 5000 else 10
            times = [[] for _ in fns]
            for _ in range(flags.rounds):
                for i, fn in enumerate(fns):
                    times[i].append(statistics.median(seconds(fn, args) for _ in range(reps)))
            medians = [statistics.median(t) for t in times]
            kv_bytes = 2 * batch * context * KV_HEADS * head_dim * dtype.itemsize
            columns = " ".join(f"{1e3 * m:8.3f} ({1e3 * min(t):.3f}-{1e3 * max(t):.3f})".ljust(26)
                               for m, t in zip(medians, times))
            ratios = " ".join(f"{m / medians[0]:.2f}" for m in medians[1:])
            rates = " ".join(f"{kv_bytes / m / 1e9:.1f}" for m in medians) if kind == "decode" else "-"
            print(f"{kind} {batch}x{context} H{head_dim} g{group} {order[:6]}".ljust(38), dtype.name.ljust(9), columns,
                  ratios, rates, f"{diff:.1e}", flush=True)


if __name__ == "__main__":
    main()
