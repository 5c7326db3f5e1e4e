"""``mmjax.generate`` over a data set: 2,000 prompts, each with its own JPEG, on the tiny LLaVA-NeXT.

The data set is what research code hands over: a generator that opens each prompt's image file
(``PIL.Image.open`` is lazy, so decoding is part of the mapping). Each run is a fresh process
(peak RSS is per process), with the default ``EngineConfig``, greedy decoding:

- ``lazy_100``: 100 prompts, mapping on the default worker pool (the memory baseline);
- ``lazy_2000``: 2,000 prompts, the same (the target: peak RSS within 1.5x of ``lazy_100``);
- ``lazy_2000_inline``: 2,000 prompts, ``mapping_threads=0`` (mapped on the stepping thread);
- ``eager_2000``, the peer: every prompt mapped before the first step, as ``generate`` did
  before it read data sets lazily (``llm.process`` on each, all held), to show the memory that
  path needs; its outputs are not generated.

Printed (JSON) per run: prompts/s, output tokens/s, the share of the wall time the stepping
thread waited for input (``engine.stats["input_wait_s"]``), peak RSS; and the ratios between
runs, with checks that the outputs agree (pool vs inline on all 2,000; the 100-prompt run
against the first 100 of the 2,000).

    python benchmarks/large_batch.py [--prompts 2000] [--baseline 100] [--max-tokens 16]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time


def _write_images(directory: str, count: int) -> None:
    """``count`` distinct 640x480 JPEGs: a colour gradient, a shifted disc, noise, per index."""
    import numpy as np
    from PIL import Image

    y, x = np.mgrid[0:480, 0:640].astype(np.float32)
    for i in range(count):
        path = os.path.join(directory, f"{i:05d}.jpg")
        if os.path.exists(path):
            continue
        rng = np.random.default_rng(i)
        cy, cx, r = rng.uniform(100, 380), rng.uniform(100, 540), rng.uniform(30, 120)
        disc = ((y - cy) ** 2 + (x - cx) ** 2 < r * r) * 120.0
        pixels = np.stack([x / 640 * 255, y / 480 * 255, disc], axis=-1)
        pixels += rng.normal(0, 12, pixels.shape).astype(np.float32)
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, quality=90)


def _data_set(directory: str, count: int):
    from PIL import Image

    for i in range(count):
        yield {"prompt": f"USER: <image>\nWhat is in picture {i}? ASSISTANT:",
               "multi_modal_data": {"image": Image.open(os.path.join(directory, f"{i:05d}.jpg"))}}


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def child(args: argparse.Namespace) -> dict:
    """One run in this process: warm up on 8 prompts, then the measured call."""
    import mmjax

    llm = mmjax.load(args.checkpoint)
    engine = llm.engine()
    params = mmjax.SamplingParams(max_tokens=args.max_tokens, temperature=0.0, ignore_eos=True)
    engine.warmup()
    mmjax.generate(llm, _data_set(args.images, 8), params, use_tqdm=False)  # first-call work out of the way
    rss_before = _peak_rss_mb()
    if args.mode == "eager":
        start = time.perf_counter()
        held = [llm.process(p) for p in _data_set(args.images, args.count)]
        return {"count": len(held), "map_s": time.perf_counter() - start, "peak_rss_mb": _peak_rss_mb(),
                "rss_before_mb": rss_before}
    threads = 0 if args.mode == "inline" else None
    waited = engine.stats["input_wait_s"]
    start = time.perf_counter()
    digests, tokens = [], 0
    for output in mmjax.generate(llm, _data_set(args.images, args.count), params, use_tqdm=False,
                                 mapping_threads=threads):
        digests.append(hashlib.sha1(repr(output.token_ids).encode()).hexdigest()[:12])
        tokens += len(output.token_ids)
    wall = time.perf_counter() - start
    return {"count": len(digests), "wall_s": wall, "prompts_per_s": len(digests) / wall,
            "output_tokens_per_s": tokens / wall,
            "input_wait_share": (engine.stats["input_wait_s"] - waited) / wall,
            "mapping_threads": llm.prompt_mapper(threads).num_threads,
            "max_num_seqs": engine.config.max_num_seqs,
            "peak_rss_mb": _peak_rss_mb(), "rss_before_mb": rss_before, "digests": digests}


def _run_child(script_args: list[str]) -> dict:
    done = subprocess.run([sys.executable, os.path.abspath(__file__), *script_args], check=True,
                          capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=2000)
    parser.add_argument("--baseline", type=int, default=100)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=["pool", "inline", "eager"], default="pool", help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", help=argparse.SUPPRESS)
    parser.add_argument("--images", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return

    from mmjax.testing.next_checkpoints import make_tiny_llava_next_checkpoint

    root = tempfile.mkdtemp(prefix="mmjax-large-batch-")
    checkpoint = make_tiny_llava_next_checkpoint(os.path.join(root, "next"), seed=12)
    images = os.path.join(root, "images")
    os.makedirs(images)
    _write_images(images, args.prompts)
    common = ["--child", "--checkpoint", checkpoint, "--images", images, "--max-tokens", str(args.max_tokens)]
    runs = {
        f"lazy_{args.baseline}": _run_child([*common, "--mode", "pool", "--count", str(args.baseline)]),
        f"lazy_{args.prompts}": _run_child([*common, "--mode", "pool", "--count", str(args.prompts)]),
        f"lazy_{args.prompts}_inline": _run_child([*common, "--mode", "inline", "--count", str(args.prompts)]),
        f"eager_{args.prompts}": _run_child([*common, "--mode", "eager", "--count", str(args.prompts)]),
    }
    small, big = runs[f"lazy_{args.baseline}"], runs[f"lazy_{args.prompts}"]
    inline, eager = runs[f"lazy_{args.prompts}_inline"], runs[f"eager_{args.prompts}"]
    report = {
        "model": "tiny LLaVA-NeXT (mmjax.testing), default EngineConfig, greedy",
        "prompts": args.prompts, "max_tokens": args.max_tokens, "image": "640x480 JPEG, opened lazily",
        "host_cores": os.cpu_count(),
        "runs": {name: {k: v for k, v in run.items() if k != "digests"} for name, run in runs.items()},
        "peak_rss_big_over_small": big["peak_rss_mb"] / small["peak_rss_mb"],
        "peak_rss_eager_over_lazy": eager["peak_rss_mb"] / big["peak_rss_mb"],
        "prompts_per_s_pool_over_inline": big["prompts_per_s"] / inline["prompts_per_s"],
        "input_wait_share_pool": big["input_wait_share"],
        "input_wait_share_inline": inline["input_wait_share"],
        "outputs_pool_equal_inline": big["digests"] == inline["digests"],
        "outputs_small_equal_first_of_big": small["digests"] == big["digests"][:args.baseline],
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
