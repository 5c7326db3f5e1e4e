"""Would KV memory that follows Gemma 3's sliding window pay? Measured, not implemented.

Today the engine gives every layer the same pages: one block table per sequence serves all layers, so a
sequence of n tokens holds ``ceil(n / page_size)`` pages in every layer (``mmjax/engine/memory.py`` sizes
the pool, ``mmjax/kv_cache/allocator.py`` hands pages out). A sliding layer never reads a key older than
its window, so with a page pool and block tables of its own (vLLM's hybrid KV cache manager does this for
Gemma 3) it would hold at most the pages that meet the last ``window`` keys: ``window / page_size + 1``
pages (``window + page_size`` tokens), freeing the pages that fall wholly behind the window.

Printed (JSON):

- ``per_sequence``: KV bytes one sequence holds at 1K, 4K, 8K and 32K tokens, every layer full-length
  (today) vs sliding layers holding ``window + page_size`` tokens, and the ratio, for the benchmark
  model of ``gemma3_vs_transformers.py`` (float32, as it runs) and for the published ``google/gemma-3-4b``,
  ``12b`` and ``27b`` text configs (bfloat16; layers, KV heads, head width, a 1024-key window, five sliding
  layers to one full: ``layer i`` full when ``(i + 1) % 6 == 0``).
- ``benchmark_engine``: the engine's actual memory plan for the benchmark model (``mmjax.load`` with no
  engine config: ``llm.engine().memory``), and how many sequences of the benchmark's longest length
  (prompt + 64 new tokens) and of ``max_model_len`` fit in its pages at once today vs with window-following
  pages (same bytes), and how many run at once under ``max_num_seqs``, which caps a step's sequences
  anyway (``running_at_once_*``).
- ``h100_estimate``: for the real models, the sequences of each length that fit in 90% of an 80 GiB H100
  less the bfloat16 weights (activations not subtracted: an upper bound on both sides alike), and how many
  of them run at once under the GPU default ``max_num_seqs`` of 64 (``running_at_once_*``).

    python benchmarks/kv_window_memory.py [--checkpoint DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import gemma3_vs_transformers as gemma_bench  # noqa: E402

PAGE_SIZE = 16  # EngineConfig's default
CONTEXTS = (1024, 4096, 8192, 32768)
#: Published text configs (``config.json`` of ``google/gemma-3-*-it``): layers, KV heads, head width,
#: window; parameters in billions (tower included) for the weights' bytes.
REAL = {
    "gemma-3-4b": dict(layers=34, kv_heads=4, head_dim=256, window=1024, params_b=4.3),
    "gemma-3-12b": dict(layers=48, kv_heads=8, head_dim=256, window=1024, params_b=12.2),
    "gemma-3-27b": dict(layers=62, kv_heads=16, head_dim=128, window=1024, params_b=27.4),
}
H100_BYTES, UTILIZATION = 80 * 2**30, 0.9
GPU_SEQS = 64  # the engine's default max_num_seqs on GPU (engine/defaults.py): a step's sequences at most


def global_layers(layers: int) -> int:
    """Full-attention layers of Gemma 3's 5:1 pattern (every sixth layer)."""
    return layers // 6


def pages(tokens: int, page_size: int = PAGE_SIZE) -> int:
    return -(-tokens // page_size)


def sliding_pages(tokens: int, window: int, page_size: int = PAGE_SIZE) -> int:
    """Pages a sliding layer must hold for a sequence of ``tokens``: those meeting the last ``window`` keys."""
    return min(pages(tokens, page_size), pages(window, page_size) + 1)


def sequence_bytes(tokens: int, *, layers: int, full_layers: int, kv_heads: int, head_dim: int, window: int,
                   bytes_per_value: int, page_size: int = PAGE_SIZE) -> dict[str, int]:
    """KV bytes of one sequence: every layer full-length (today), and sliding layers window-bound."""
    page_layer = 2 * kv_heads * head_dim * page_size * bytes_per_value  # K and V, one page, one layer
    today = layers * pages(tokens, page_size) * page_layer
    windowed = (full_layers * pages(tokens, page_size)
                + (layers - full_layers) * sliding_pages(tokens, window, page_size)) * page_layer
    return {"today": today, "window_following": windowed}


def table(shape: dict, bytes_per_value: int, contexts=CONTEXTS) -> dict:
    rows = {}
    for n in contexts:
        b = sequence_bytes(n, layers=shape["layers"], full_layers=shape["full_layers"], kv_heads=shape["kv_heads"],
                           head_dim=shape["head_dim"], window=shape["window"], bytes_per_value=bytes_per_value)
        rows[f"{n}"] = {"today_mib": round(b["today"] / 2**20, 1),
                        "window_following_mib": round(b["window_following"] / 2**20, 1),
                        "saved_fraction": round(1 - b["window_following"] / b["today"], 3),
                        "sequences_factor": round(b["today"] / b["window_following"], 2)}
    return rows


def benchmark_shape() -> dict:
    text = gemma_bench.TEXT
    return dict(layers=text["layers"], full_layers=text["global_layers"], kv_heads=text["kv_heads"],
                head_dim=text["head_dim"], window=text["window"])


def engine_plan(path: str) -> dict:
    """The engine's own plan for the benchmark model (defaults), and the sequences it holds either way."""
    import mmjax

    llm = mmjax.load(path)
    engine = llm.engine()
    plan, shape = engine.memory, benchmark_shape()
    prompt_lens = [len(llm.process(p).token_ids) for p in gemma_bench.prompts(8)]
    usable = (plan.num_pages - 1) * plan.page_bytes  # page 0 is the null page
    layer_page = plan.page_bytes // shape["layers"]
    bytes_per_value = layer_page // (2 * shape["kv_heads"] * shape["head_dim"] * plan.page_size)
    fits = {}
    for name, n in (("benchmark_longest_prompt_plus_64", max(prompt_lens) + 64),
                    ("benchmark_mean_prompt_plus_64", round(sum(prompt_lens) / len(prompt_lens)) + 64),
                    ("max_model_len", engine.max_model_len)):
        b = sequence_bytes(n, bytes_per_value=bytes_per_value, page_size=plan.page_size, **shape)
        today, windowed, cap = usable // b["today"], usable // b["window_following"], engine.config.max_num_seqs
        fits[name] = {"tokens": n, "today": today, "window_following": windowed,
                      "running_at_once_today": min(today, cap), "running_at_once_window_following": min(windowed, cap),
                      "today_mib_each": round(b["today"] / 2**20, 2),
                      "window_following_mib_each": round(b["window_following"] / 2**20, 2)}
    return {"plan": plan.describe(), "num_pages": plan.num_pages, "page_size": plan.page_size,
            "page_bytes_all_layers": plan.page_bytes, "kv_cache_mib": round(plan.kv_cache_bytes / 2**20, 1),
            "max_num_seqs": engine.config.max_num_seqs, "max_model_len": engine.max_model_len,
            "benchmark_prompt_lens": prompt_lens, "sequences_that_fit": fits}


def h100(name: str, spec: dict) -> dict:
    budget = int(H100_BYTES * UTILIZATION) - int(spec["params_b"] * 1e9 * 2)
    shape = dict(layers=spec["layers"], full_layers=global_layers(spec["layers"]), kv_heads=spec["kv_heads"],
                 head_dim=spec["head_dim"], window=spec["window"])
    out = {"kv_budget_gib": round(budget / 2**30, 1)}
    for n in CONTEXTS:
        b = sequence_bytes(n, bytes_per_value=2, **shape)
        today, windowed = budget // b["today"], budget // b["window_following"]
        out[f"{n}"] = {"today": today, "window_following": windowed, "running_at_once_today": min(today, GPU_SEQS),
                       "running_at_once_window_following": min(windowed, GPU_SEQS)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="the benchmark's checkpoint from an earlier run")
    args = parser.parse_args()
    shape = benchmark_shape()
    report = {
        "page_size": PAGE_SIZE,
        "per_sequence": {
            "benchmark_model_float32": {"shape": shape, **table(shape, 4)},
            **{name: {"shape": {**{k: v for k, v in spec.items() if k != "params_b"},
                                "full_layers": global_layers(spec["layers"])}, **table(
                {**spec, "full_layers": global_layers(spec["layers"])}, 2)} for name, spec in REAL.items()},
        },
        "benchmark_engine": engine_plan(args.checkpoint or gemma_bench.make_checkpoint(
            tempfile.mkdtemp(prefix="mmjax-gemma3-kv-"))),
        "h100_estimate": {name: h100(name, spec) for name, spec in REAL.items()},
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
