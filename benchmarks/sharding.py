"""Per-device memory of sharded inference, printed as one JSON object.

Loads a small random LLaVA-1.5 checkpoint (heads, KV heads, MLP width and
vocabulary divisible by 8) on one device and on the meshes 1x8, 2x4 and 4x2
(data x model) of 8 simulated CPU devices, and reports for each:

- the weight bytes one device holds (sum over parameters of the bytes of the
  shard on device 0),
- the KV-cache bytes one device holds for an engine with the same EngineConfig
  (``num_pages`` is per data replica, so a mesh with R replicas caches R times
  the tokens: ``kv_cached_tokens``),
- the median wall time of ``llm.logits`` on one image prompt,
- ``mmjax.generate`` of 8 text prompts x 16 tokens (after a warm-up run):
  tokens/s, the number of engine steps and their mean time, and how the tokens
  spread over the data replicas (4 sequences per replica per step).

The memory figures are the point: on simulated CPU devices all "devices" share
the same cores, so the timings say little about a real TPU/GPU mesh.

    python benchmarks/sharding.py [--repeats N]
"""

from __future__ import annotations

import os
import sys

_FLAG = "--xla_force_host_platform_device_count=8"
if _FLAG not in os.environ.get("XLA_FLAGS", ""):
    if "jax" in sys.modules:  # too late to add devices to this process: run again in a fresh one
        os.execve(sys.executable, [sys.executable, *sys.argv],
                  dict(os.environ, XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} {_FLAG}".strip()))
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_FLAG}".strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
from flax import nnx  # noqa: E402

import mmjax  # noqa: E402
from mmjax.demo import demo_photo  # noqa: E402
from mmjax.testing.random_llava import make_random_llava_checkpoint  # noqa: E402

TEXT = dict(hidden_size=256, num_attention_heads=8, num_key_value_heads=8, intermediate_size=512, vocab_size=1024)
VISION = dict(image_size=336, patch_size=14)
MESHES = (None, {"data": 1, "model": 8}, {"data": 2, "model": 4}, {"data": 4, "model": 2})
ENGINE = mmjax.EngineConfig(page_size=16, max_num_seqs=4, max_num_batched_tokens=64, num_pages=129,
                            max_model_len=1024)


def shard0_bytes(arrays) -> int:
    """Bytes of the shard of each array that lives on device 0 (every array here has one)."""
    return int(sum(a.addressable_shards[0].data.nbytes for a in arrays))


def weight_bytes(llm) -> tuple[int, int, int]:
    """(bytes on device 0, total bytes of the unsplit parameters, bytes of the replicated ones)."""
    arrays = [leaf.get_value() for _, leaf in nnx.to_flat_state(llm.state)]
    replicated = sum(a.nbytes for a in arrays if a.sharding.is_fully_replicated)
    return shard0_bytes(arrays), int(sum(a.nbytes for a in arrays)), int(replicated)


def kv_bytes(llm) -> tuple[int, int, str]:
    """(KV-cache bytes on device 0, total KV-cache bytes, the pages' PartitionSpec)."""
    pages = llm.engine(ENGINE).runner.kv_pages
    arrays = [a for page in pages for a in (page.k, page.v)]
    return shard0_bytes(arrays), int(sum(a.nbytes for a in arrays)), _spec(pages[0].k)


def _spec(array) -> str:
    sharding = array.sharding
    return str(sharding.spec) if hasattr(sharding, "spec") else f"one device ({type(sharding).__name__})"


def time_generate(llm, num_prompts: int = 8, max_tokens: int = 16) -> dict:
    """Generation throughput after a warm-up run of the same batch (which compiles every shape)."""
    prompts = [f"USER: Tell me story number {i}. ASSISTANT:" for i in range(num_prompts)]
    params = mmjax.SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
    mmjax.generate(llm, prompts, params, engine_config=ENGINE, use_tqdm=False)
    engine = llm.engine(ENGINE)
    before = {**engine.stats, "tokens_per_replica": list(engine.stats["tokens_per_replica"])}
    start = time.perf_counter()
    mmjax.generate(llm, prompts, params, engine_config=ENGINE, use_tqdm=False)
    elapsed = time.perf_counter() - start
    steps = engine.stats["steps"] - before["steps"]
    return {"generate_tokens_per_s": round(num_prompts * max_tokens / elapsed, 2), "generate_steps": steps,
            "step_mean_s": round(elapsed / steps, 4),
            "tokens_per_replica": [b - a for a, b in zip(before["tokens_per_replica"],
                                                         engine.stats["tokens_per_replica"])]}


def time_logits(llm, prompt, repeats: int) -> float:
    llm.logits(prompt)  # compile
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        llm.logits(prompt)  # returns numpy: the result is on the host, so the step has finished
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="timed llm.logits calls per mesh")
    args = parser.parse_args()

    path = make_random_llava_checkpoint(tempfile.mkdtemp(), num_layers=2, text_config=TEXT, vision_config=VISION)
    prompt = {"prompt": "USER: <image>\nWhat is shown in this image? ASSISTANT:",
              "multi_modal_data": {"image": demo_photo()}}
    results = {
        "backend": jax.default_backend(),
        "num_devices": jax.device_count(),
        "model": {"text": {**TEXT, "num_hidden_layers": 2}, "vision": VISION, "dtype": "float32"},
        "engine_config": {k: getattr(ENGINE, k) for k in ("page_size", "max_num_seqs", "num_pages")},
        "note": ("Timings are on simulated CPU devices (XLA_FLAGS=--xla_force_host_platform_device_count=8) that "
                 "share the same few host cores, so they say little about a TPU/GPU mesh; the per-device memory "
                 "figures are what matter. Norms, embeddings and the projector are replicated; the vision tower "
                 "(4 heads) is split on 2x4 and 4x2 and replicated on 1x8."),
        "meshes": {},
    }
    for shape in MESHES:
        llm = mmjax.load(path, mesh=shape)
        key = "1x1" if shape is None else f"{shape['data']}x{shape['model']}"
        w_dev, w_total, w_replicated = weight_bytes(llm)
        kv_dev, kv_total, kv_spec = kv_bytes(llm)
        results["meshes"][key] = {
            "devices": 1 if shape is None else int(llm.mesh.devices.size),
            "weight_bytes_per_device": w_dev,
            "weight_bytes_total": w_total,
            "weight_bytes_replicated": w_replicated,  # on every device (norms, embeddings, projector, ...)
            "weight_fraction_per_device": round(w_dev / w_total, 4),
            "kv_cache_bytes_per_device": kv_dev,
            "kv_cache_bytes_total": kv_total,
            "kv_fraction_per_device": round(kv_dev / kv_total, 4),
            "kv_pages_spec": kv_spec,
            "kv_cached_tokens": llm.engine(ENGINE).num_replicas * (ENGINE.num_pages - 1) * ENGINE.page_size,
            "logits_median_s": round(time_logits(llm, prompt, args.repeats), 4),
            **time_generate(llm),
        }
        del llm
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
