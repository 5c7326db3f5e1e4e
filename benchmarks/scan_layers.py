"""Decoder layers as a Python loop (what mmjax runs) vs ``jax.lax.scan`` over stacked layer parameters.

The restructure passes each layer its KV pages and takes the new ones back,
which makes a scan possible. This measures whether it pays: compile time and
step time of the same paged step, both ways, on the benchmark decoder of
``generate_vs_transformers.py`` (text 512 wide, 8 layers, 8 heads, vocab
32064, float32), with 8 sequences of ~600 cached tokens each, for a decode
step (8 tokens) and a prefill step (2048 tokens). Prints JSON.

    python benchmarks/scan_layers.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import mmjax
from mmjax.attention import PagedAttend
from mmjax.kv_cache import KVPages, PageAllocator, build_attention_metadata, init_kv_pages
from generate_vs_transformers import make_checkpoint

PAGE_SIZE, CONTEXT, SEQS = 16, 600, 8


def loop_step(graphdef, state, pages, input_ids, metadata, last):
    model = nnx.merge(graphdef, state)
    hidden, pages = model.decoder_hidden_states(model.embed_text(input_ids), metadata.positions,
                                                PagedAttend(metadata, impl="xla"), pages)
    return model.logits(hidden[0, last]), pages


def scan_step(graphdef, state, layer_graphdef, stacked, pages, input_ids, metadata, last):
    """The same step with the layers scanned: ``stacked`` holds every layer's parameters on a leading axis."""
    model = nnx.merge(graphdef, state)
    lm = model.language_model
    attend = PagedAttend(metadata, impl="xla")

    def body(x, layer_inputs):
        params, k, v = layer_inputs
        x, new = nnx.merge(layer_graphdef, params)(x, metadata.positions, attend, KVPages(k, v))
        return x, (new.k, new.v)

    x, (k, v) = jax.lax.scan(body, model.embed_text(input_ids), (stacked, pages.k, pages.v))
    return model.logits(lm.norm(x)[0, last]), KVPages(k, v)


def batch(num_tokens: int, allocator: PageAllocator, vocab: int, decode: bool):
    q_lens = [1] * SEQS if decode else [num_tokens // SEQS] * SEQS
    kv_lens = [CONTEXT + q for q in q_lens]
    tables = [allocator.block_table(i) for i in range(SEQS)]
    metadata = build_attention_metadata(tables, kv_lens, q_lens, page_size=PAGE_SIZE, token_buckets=[num_tokens],
                                        seq_buckets=[SEQS], page_buckets=[-(-1024 // PAGE_SIZE)])
    ids = np.random.default_rng(0).integers(0, vocab, (1, num_tokens)).astype(np.int32)
    last = np.cumsum(q_lens) - 1
    return jnp.asarray(ids), jax.tree.map(lambda x: jnp.asarray(x)[None], metadata), jnp.asarray(last)


def measure(fn, args: list, static: tuple[int, ...], pages_at: int, repeats: int) -> dict:
    """Compile seconds and the best step time; the donated pages are fed back each step."""
    start = time.perf_counter()
    compiled = fn.lower(*args).compile()
    compile_s = time.perf_counter() - start
    args = [a for i, a in enumerate(args) if i not in static]  # the compiled program takes the rest
    pages_at -= sum(i < pages_at for i in static)
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        logits, args[pages_at] = compiled(*args)
        jax.block_until_ready(logits)
        times.append(time.perf_counter() - start)
    return {"compile_s": round(compile_s, 3), "step_ms": round(1e3 * min(times[1:]), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    llm = mmjax.load(make_checkpoint(tempfile.mkdtemp(prefix="mmjax-scan-")))
    model = llm.model
    text = model.text_config
    num_pages = SEQS * -(-1024 // PAGE_SIZE) + 1
    allocator = PageAllocator(num_pages, PAGE_SIZE)
    for i in range(SEQS):
        allocator.allocate(i, CONTEXT + 256)
    layers = model.language_model.layers
    layer_graphdef = nnx.split(layers[0])[0]
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *[nnx.split(layer)[1] for layer in layers])
    graphdef, state = llm.graphdef, llm.state
    report = {"config": {"layers": text.num_layers, "width": text.hidden_size, "seqs": SEQS, "context": CONTEXT,
                         "kv_cache_mb": round(2 * text.num_layers * text.num_kv_heads * num_pages * PAGE_SIZE
                                              * text.head_dim * 4 / 2**20, 1)}}
    for name, tokens, decode in (("decode", SEQS, True), ("prefill", 2048, False)):
        ids, metadata, last = batch(tokens, allocator, text.vocab_size, decode)
        pages = init_kv_pages(text.num_layers, text.num_kv_heads, num_pages, PAGE_SIZE, text.head_dim, jnp.float32)
        loop = jax.jit(loop_step, static_argnums=0, donate_argnums=2)
        report[f"{name}_loop"] = measure(loop, [graphdef, state, pages, ids, metadata, last], (0,), 2,
                                         args.repeats)
        fresh = init_kv_pages(text.num_layers, text.num_kv_heads, num_pages, PAGE_SIZE, text.head_dim, jnp.float32)
        stacked_pages = KVPages(jnp.stack([p.k for p in fresh]), jnp.stack([p.v for p in fresh]))
        del fresh
        scan = jax.jit(scan_step, static_argnums=(0, 2), donate_argnums=4)
        report[f"{name}_scan"] = measure(scan, [graphdef, state, layer_graphdef, stacked, stacked_pages, ids,
                                                metadata, last], (0, 2), 4, args.repeats)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
