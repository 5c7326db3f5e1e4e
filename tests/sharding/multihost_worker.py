"""One process of a 2-process (2 hosts x 4 CPU devices) run; ``test_multihost.py`` launches two.

Usage: ``python multihost_worker.py CHECKPOINT PORT PROCESS_ID OUT.npz`` with
``XLA_FLAGS=--xla_force_host_platform_device_count=4`` and ``JAX_PLATFORMS=cpu``
set by the caller. Both processes join one ``{"data": 2, "model": 4}`` mesh
with ``jax.distributed.initialize`` (exactly as on a TPU pod slice, where the
arguments come from the environment), run ``llm.logits`` and ``mmjax.generate``,
then generate again on a ``{"data": 1, "model": 8}`` mesh (tensor parallel
across the two processes), and write what they saw to OUT.npz.
"""

from __future__ import annotations

import sys

import jax
import numpy as np

PROMPTS = ("USER: <image>\nWhat is it? ASSISTANT:", "USER: Write a poem. ASSISTANT:",
           "USER: <image>\nAnd this? ASSISTANT:", "USER: Count to ten, please. ASSISTANT:")
IMAGES = {0: (2, (30, 30)), 2: (3, (20, 44))}  # prompt index -> (seed, size)


def image(seed: int, size: tuple[int, int]):
    from PIL import Image

    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8))


def prompts() -> list:
    return [{"prompt": p, "multi_modal_data": {"image": image(*IMAGES[i])}} if i in IMAGES else p
            for i, p in enumerate(PROMPTS)]


def sampling_params():
    import mmjax

    greedy = mmjax.SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True)
    sampled = mmjax.SamplingParams(max_tokens=6, temperature=1.0, top_p=0.9, ignore_eos=True)  # no seed
    return [greedy, greedy, greedy, sampled]


def engine_config():
    import mmjax

    return mmjax.EngineConfig(page_size=8, max_num_seqs=4, max_num_batched_tokens=64, num_pages=37,
                              max_model_len=128)


def main(checkpoint: str, port: str, process_id: str, out: str) -> None:
    jax.distributed.initialize(f"localhost:{port}", num_processes=2, process_id=int(process_id),
                               initialization_timeout=120, heartbeat_timeout_seconds=60,
                               shutdown_timeout_seconds=60)
    import mmjax

    llm = mmjax.load(checkpoint, mesh={"data": 2, "model": 4})
    _, logits = llm.logits(prompts()[0])
    outputs = mmjax.generate(llm, prompts(), sampling_params(), engine_config=engine_config(), use_tqdm=False)
    engine = llm.engine()
    drawn = engine.add_request("USER: hi ASSISTANT:", mmjax.SamplingParams(max_tokens=1))  # the engine draws a seed
    engine.abort(drawn)
    # Tensor parallel across both processes: every process computes every row, each with its own inputs.
    wide = mmjax.load(checkpoint, mesh={"data": 1, "model": 8})
    wide_outputs = mmjax.generate(wide, prompts()[1::2], sampling_params()[1::2], engine_config=engine_config(),
                                  use_tqdm=False)
    np.savez(out, drawn_seed=drawn.seed, tokens_1x8=np.array([o.outputs[0].token_ids for o in wide_outputs]),
             process_index=jax.process_index(), process_count=jax.process_count(),
             device_count=jax.device_count(), local_device_count=jax.local_device_count(), logits=logits,
             tokens=np.array([o.outputs[0].token_ids for o in outputs]),
             tokens_per_replica=np.array(engine.stats["tokens_per_replica"]),
             local_kv_shards=len(engine.runner.kv_pages[0].k.addressable_shards))
    jax.distributed.shutdown()


if __name__ == "__main__":
    main(*sys.argv[1:])
