"""A prefill-shaped product on XLA:CPU in each operand dtype the linear-layer policy could hand it.

``[2048, 512] @ [512, 1376]`` (the LLaVA benchmark model's MLP at a 2048-token step; ``--shape M K N`` for
others), compiled with the engine's options, best of ``--repeats``: float32; bfloat16 as is, through float32,
and with a float32 result; int8 weights converted in the product, with float32 and bfloat16 activations, as
float32 and as bfloat16 operands. ``mmjax.models.common.linear._xla_product`` picks from this table
(on CPU: both operands in float32). Prints JSON: ms and GFLOP/s per variant.

    python benchmarks/prefill_matmul.py [--shape 2048 512 1376] [--repeats 10]
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from mmjax.engine.compilation import compiler_options

f32, bf16 = jnp.float32, jnp.bfloat16
VARIANTS = {  # name -> (x dtype, w dtype, product)
    "float32": (f32, f32, lambda a, b, s: a @ b),
    "bfloat16": (bf16, bf16, lambda a, b, s: a @ b),
    "bfloat16_via_float32": (bf16, bf16, lambda a, b, s: (a.astype(f32) @ b.astype(f32)).astype(bf16)),
    "bfloat16_float32_result": (bf16, bf16, lambda a, b, s: jax.lax.dot(a, b, preferred_element_type=f32).astype(bf16)),
    "int8_float32_activations": (f32, jnp.int8, lambda a, b, s: (a @ b.astype(f32)) * s),
    "int8_bfloat16_activations_bfloat16_dot": (
        bf16, jnp.int8, lambda a, b, s: ((a @ b.astype(bf16)).astype(f32) * s).astype(bf16)),
    "int8_bfloat16_activations_via_float32": (
        bf16, jnp.int8, lambda a, b, s: ((a.astype(f32) @ b.astype(f32)) * s).astype(bf16)),
}


def best_seconds(fn, args, repeats: int) -> float:
    fn(*args).block_until_ready()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(*args).block_until_ready()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=(2048, 512, 1376), metavar=("M", "K", "N"))
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    m, k, n = args.shape
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((m, k)), rng.standard_normal((k, n))
    scale = jnp.asarray(np.abs(w).max(axis=0) / 127, f32)
    report = {"shape": [m, k, n], "backend": jax.default_backend()}
    for name, (x_dtype, w_dtype, product) in VARIANTS.items():
        weights = np.clip(np.round(w / np.asarray(scale)), -127, 127) if w_dtype == jnp.int8 else w
        operands = (jnp.asarray(x, x_dtype), jnp.asarray(weights, w_dtype), scale)
        seconds = best_seconds(jax.jit(product, compiler_options=compiler_options()), operands, args.repeats)
        report[name] = {"ms": round(seconds * 1e3, 2), "gflop_per_s": round(2 * m * k * n / seconds / 1e9, 1)}
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
