"""Run in a subprocess with 8 CPU devices (XLA_FLAGS set by the caller before jax starts).

Loads tiny LLaVA-1.5 / LLaVA-NeXT checkpoints on one device and on several
meshes, and prints one JSON object of findings for ``test_sharded_logits`` to check.
Usage: ``python sharded_worker.py TMPDIR``.
"""

from __future__ import annotations

import dataclasses
import json
import re
import sys

import jax
import numpy as np
from flax import nnx
from PIL import Image

import mmjax
from mmjax.sharding import MODEL
from mmjax.testing.checkpoints import make_tiny_llava_checkpoint
from mmjax.testing.next_checkpoints import make_tiny_llava_next_checkpoint
from mmjax.testing.qwen_checkpoints import make_tiny_qwen2_5_vl_checkpoint, make_tiny_qwen3_vl_checkpoint

#: Heads, MLP width and vocabulary divisible by 8; 2 KV heads: sharded on 1x2 / 4x2, replicated on 2x4 / 1x8.
DIMS = dict(num_heads=8, num_kv_heads=2, intermediate_size=56, vocab_size=384)
MESHES = ({"data": 1, "model": 8}, {"data": 2, "model": 4}, {"data": 4, "model": 2})


def _image(seed: int, size: tuple[int, int]) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def _shardings(llm) -> dict[str, str]:
    return {"/".join(map(str, path)): str(leaf.get_value().sharding.spec)
            for path, leaf in nnx.to_flat_state(llm.state)}


def _split_but_replicated(llm) -> list[str]:
    """Parameters of the decoder's split layers (everything but norms), and of the vision tower's
    attention and MLP when the model axis divides its 4 heads and 44-wide MLP, that are fully replicated."""
    model = llm.mesh.shape[MODEL]
    vision_split = 4 % model == 0 and 44 % model == 0
    bad = []
    for path, leaf in nnx.to_flat_state(llm.state):
        name = "/".join(map(str, path))
        decoder = (name.startswith("language_model/") and "norm" not in name
                   and not name.endswith("o_proj/bias") and not name.endswith("down_proj/bias")
                   and not (llm.hf_config.text_config.num_key_value_heads % model
                            and "_proj" in name and ("k_proj" in name or "v_proj" in name)))
        vision = (vision_split and name.startswith("vision_tower/layers/") and "layer_norm" not in name
                  and not name.endswith("out_proj/bias") and not name.endswith("fc2/bias"))
        expected_split = decoder or vision
        if expected_split and leaf.get_value().sharding.is_fully_replicated:
            bad.append(name)
    return bad


def compare(path: str, prompt, meshes) -> dict:
    single = mmjax.load(path)
    _, want = single.logits(prompt)
    out = {}
    for shape in meshes:
        llm = mmjax.load(path, mesh=shape)
        _, got = llm.logits(prompt)
        key = f"{shape['data']}x{shape['model']}"
        out[key] = {
            "max_abs_diff": float(np.abs(got - want).max()), "max_abs": float(np.abs(want).max()),
            "mesh_devices": int(llm.mesh.devices.size), "split_but_replicated": _split_but_replicated(llm),
            "shardings": _shardings(llm),
        }
    return out


#: KV heads split over "model" (4x2), and replicated because 2 KV heads < 4 or 8 (2x4, 1x8).
GENERATE_MESHES = ({"data": 4, "model": 2}, {"data": 1, "model": 8}, {"data": 2, "model": 4})
ENGINE = mmjax.EngineConfig(page_size=8, max_num_seqs=4, max_num_batched_tokens=64, num_pages=37, max_model_len=128)
NEXT_ENGINE = dataclasses.replace(ENGINE, num_pages=96, max_model_len=320)  # anyres prompts are longer


PROMPTS = [{"prompt": "USER: <image>\nWhat is it? ASSISTANT:", "multi_modal_data": {"image": _image(2, (30, 30))}},
           "USER: Write a poem. ASSISTANT:",
           {"prompt": "USER: <image>\nAnd this? ASSISTANT:", "multi_modal_data": {"image": _image(3, (20, 44))}},
           "USER: Count to ten, please. ASSISTANT:"]


def compare_generate(path: str, meshes, prompts=PROMPTS, details: bool = True, engine_config=ENGINE) -> dict:
    """Greedy tokens on one device and on each mesh (with placement and compiled-step facts if ``details``)."""
    params = mmjax.SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True)
    want = [list(o.token_ids) for o in mmjax.generate(mmjax.load(path), prompts, params, engine_config=engine_config)]
    out = {"single": want}
    for shape in meshes:
        llm = mmjax.load(path, mesh=shape)
        got = [list(o.token_ids) for o in mmjax.generate(llm, prompts, params, engine_config=engine_config)]
        engine = llm.engine()
        key = f"{shape['data']}x{shape['model']}"
        if not details:
            out[key] = {"tokens": got, "tokens_per_replica": engine.stats["tokens_per_replica"]}
            continue
        out[key] = {
            "tokens": got, "kv_spec": str(engine.runner.kv_pages[0].k.sharding.spec),
            "kv_shape": list(engine.runner.kv_pages[0].k.shape),
            "kv_shards": sorted({str(s.data.shape) for s in engine.runner.kv_pages[0].k.addressable_shards}),
            "tokens_per_replica": engine.stats["tokens_per_replica"],
            "pages_free": [a.num_free_pages == a.num_pages - 1 for a in engine.allocators],
            **memory_figures(engine),
            **step_collectives(engine, decode=shape["model"] == 2),
        }
    if not details:
        return out
    out["warm"] = warm_then_generate(path, meshes[-1], prompts, params)
    out["logprobs"] = compare_logprobs(path, meshes[-1], prompts[:2])
    # The Pallas kernel (interpret mode here) inside shard_map: each device runs it on its own heads.
    llm = mmjax.load(path, mesh=meshes[-1])
    import time
    t = time.perf_counter()
    pallas = dataclasses.replace(ENGINE, impl="pallas")
    params = dataclasses.replace(params, max_tokens=3)
    out["pallas"] = [list(o.token_ids) for o in mmjax.generate(llm, prompts[1:], params, engine_config=pallas)]
    out["t_pallas"] = time.perf_counter() - t
    return out


def caching_prompts() -> list:
    """The same image under two questions, and a shared instruction before different images."""
    instruction = "USER: Look carefully, describe every object, its color and its place, then answer. "
    return [{"prompt": f"USER: <image>\n{q} ASSISTANT:", "multi_modal_data": {"image": _image(7, (30, 30))}}
            for q in ("What is it?", "What color is it?")] + \
           [{"prompt": instruction + "<image>\nWhich? ASSISTANT:", "multi_modal_data": {"image": _image(s, (30, 30))}}
            for s in (8, 9)]


def compare_caching(path: str, shape, engine_config) -> dict:
    """Greedy tokens of two calls over ``caching_prompts`` on ``shape`` with every cache on (the
    defaults), and on one device with every cache off."""
    params = mmjax.SamplingParams(max_tokens=5, temperature=0.0, ignore_eos=True)
    off = dataclasses.replace(engine_config, enable_prefix_caching=False, encoder_cache_tokens=0)
    single = mmjax.load(path, mm_processor_cache_gb=0)
    want = [list(o.token_ids) for o in mmjax.generate(single, caching_prompts(), params, engine_config=off)]
    llm = mmjax.load(path, mesh=shape)
    calls, encoder_calls, prefill = [], [], []
    for _ in range(2):
        outputs = mmjax.generate(llm, caching_prompts(), params, engine_config=engine_config)
        calls.append([list(o.token_ids) for o in outputs])
        encoder_calls.append(llm.engine().stats["encoder_calls"] - sum(encoder_calls))
        prefill.append(llm.engine().stats["prefill_tokens"] - sum(prefill))
    return {"off": want, "on": calls, "caches": llm.engine().cache_stats(), "encoder_calls": encoder_calls,
            "prefill_tokens": prefill}


def warm_then_generate(path: str, shape, prompts, params) -> dict:
    """Compilations of a mixed workload after ``warmup()`` on a mesh, and where images are encoded."""
    from mmjax.engine.warmup import count_compilations

    llm = mmjax.load(path, mesh=shape)
    engine = llm.engine(ENGINE)
    engine.warmup()
    with count_compilations() as compiled:
        tokens = [list(o.token_ids) for o in mmjax.generate(llm, prompts, params, engine_config=ENGINE)]
    mm = llm.mm_registry.map_input(llm.model_config, {"image": _image(5, (30, 30))})
    engine.runner.encode(mm, 1, np.zeros(0, np.int32))  # replica 1 encodes, into its own arena
    embeds = engine.runner.arena(1)
    replica_devices = {d.id for d in llm.mesh.devices[1]}
    return {"compilations": compiled[0], "tokens": tokens,
            "encoded_on": sorted(d.id for d in embeds.sharding.device_set), "replica_1": sorted(replica_devices)}


def compare_logprobs(path: str, shape, prompts) -> dict:
    """Sampled-token and prompt logprobs on ``shape`` (two requests: one per replica of a 2x? mesh)
    against one device: the largest difference of any logprob, and whether the token ids agree."""
    params = mmjax.SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True, logprobs=2, prompt_logprobs=1)

    def flat(outputs) -> tuple[list, list]:
        ids, values = [], []
        for o in outputs:
            for entries in [*o.prompt_logprobs[1:], *o.logprobs]:
                for token, lp in sorted(entries.items()):
                    ids.append(token)
                    values.append(lp.logprob)
        return ids, values

    want_ids, want = flat(mmjax.generate(mmjax.load(path), prompts, params, engine_config=ENGINE))
    llm = mmjax.load(path, mesh=shape)
    got_ids, got = flat(mmjax.generate(llm, prompts, params, engine_config=ENGINE))
    return {"same_ids": got_ids == want_ids, "count": len(want),
            "max_diff": float(np.abs(np.array(got) - np.array(want)).max()) if got_ids == want_ids else None,
            "tokens_per_replica": llm.engine().stats["tokens_per_replica"]}


def memory_figures(engine) -> dict:
    """The plan's per-device figures, and the same figures measured from the placed arrays."""
    mesh = engine.runner.placement.mesh

    def one_device_bytes(x) -> float:  # whole size / the devices the spec splits it over
        split = 1
        for axes in x.sharding.spec:
            for axis in (axes if isinstance(axes, tuple) else (axes,)):
                split *= mesh.shape[axis] if axis else 1
        return x.nbytes / split

    kv_bytes = sum(one_device_bytes(x) for layer in engine.runner.kv_pages for x in (layer.k, layer.v))
    return {"plan_weights": engine.memory.weights_bytes, "plan_page_bytes": engine.memory.page_bytes,
            "plan_pages": engine.memory.num_pages, "plan_describe": engine.memory.describe(),
            "measured_weights": sum(one_device_bytes(x) for x in jax.tree.leaves(engine.llm.state)),
            "measured_kv_per_page": kv_bytes / engine.memory.num_pages}


def step_collectives(engine, decode: bool) -> dict:
    """The collectives of the compiled prefill (and decode) step; which of them move KV pages.

    Also the per-device shape of the step's token input: split over "data", each
    device sees one replica's tokens.
    """
    pages_axis = {engine.runner.kv_pages[0].k.shape[1], engine.memory.num_pages}  # global and per replica
    found = {"all_gathers": 0, "collectives": 0, "kv_collectives": []}
    for is_decode in (False, True) if decode else (False,):
        compiled = engine.runner.lower_step(16, decode=is_decode).compile()
        for key, value in scan_collectives(compiled.as_text(), pages_axis).items():
            found[key] += value
        found["input_ids_sharding"] = str(compiled.input_shardings[0][2].spec)
    return found


def scan_collectives(hlo: str, num_pages: set[int]) -> dict:
    """Count the collectives of compiled HLO text; list those whose result has a page axis (a size in ``num_pages``)."""
    found = {"all_gathers": 0, "collectives": 0, "kv_collectives": []}
    for line in hlo.splitlines():
        op = re.search(r"= (\S+) (all-gather|all-reduce|all-to-all|collective-permute|reduce-scatter)(-start)?\(",
                       line)
        if not op:
            continue
        found["collectives"] += 1
        found["all_gathers"] += op.group(2) == "all-gather"
        dims = {d for shape in re.findall(r"\[([\d,]*)\]", op.group(1)) for d in shape.split(",")}
        if dims & {str(n) for n in num_pages}:
            found["kv_collectives"].append(line.strip()[:160])
    return found


def compare_training(path: str, shape: dict) -> dict:
    """Three optax steps on ``shape`` (the batch split over "data") and on one device: losses and
    the trained weights."""
    from mmjax.training.shapes_task import training_examples

    examples = [e for _, e in zip(range(24), training_examples(4, sides=(30, 60)))]
    import optax  # SGD: the update is linear in the gradient (Adam's sign-like steps magnify rounding)

    runs = [mmjax.train(mmjax.load(path, mesh=mesh), examples, steps=3, batch_size=8, trainable="all",
                        optimizer=optax.sgd(0.1), shuffle=False, use_tqdm=False) for mesh in (shape, None)]
    sharded, single = runs
    weights = [np.asarray(jax.device_get(x)) for x in jax.tree.leaves(sharded.llm.state)]
    reference = [np.asarray(x) for x in jax.tree.leaves(single.llm.state)]
    return {"losses": sharded.losses, "single_losses": single.losses,
            "max_weight_diff": max(float(np.abs(a - b).max()) for a, b in zip(weights, reference)),
            "moved": max(float(np.abs(a - np.asarray(b)).max()) for a, b in
                         zip(reference, jax.tree.leaves(mmjax.load(path).state)))}


#: Qwen's tiny decoder has 4 heads (2 KV heads): model axes of 2 and 4 divide it.
QWEN_MESHES = ({"data": 2, "model": 4}, {"data": 4, "model": 2})
QWEN_ENGINE = dataclasses.replace(ENGINE, num_pages=None, kv_cache_bytes=None, max_model_len=256)


def compare_qwen(tmp: str) -> dict:
    """Both Qwen families on each mesh: logits and greedy tokens against one device's."""
    v = "<|vision_start|><|image_pad|><|vision_end|>"
    prompts = [{"prompt": f"<|im_start|>user\n{v}What is it?<|im_end|>\n<|im_start|>assistant\n",
                "multi_modal_data": {"image": _image(7, (60, 90))}},
               "<|im_start|>user\nWrite a poem.<|im_end|>\n<|im_start|>assistant\n",
               {"prompt": f"{v}And this?", "multi_modal_data": {"image": _image(8, (100, 40))}},
               "<|im_start|>user\nCount to ten.<|im_end|>\n<|im_start|>assistant\n"]
    dims = dict(intermediate_size=88, vocab_size=512)  # divisible by 4
    out = {}
    for name, make, factor in (("qwen2_5_vl", make_tiny_qwen2_5_vl_checkpoint, 28),
                               ("qwen3_vl", make_tiny_qwen3_vl_checkpoint, 32)):
        path = make(f"{tmp}/{name}", max_pixels=200 * factor * factor, **dims)
        out[name] = {"logits": compare(path, prompts[0], QWEN_MESHES),
                     "generate": compare_generate(path, QWEN_MESHES, prompts, details=False,
                                                  engine_config=QWEN_ENGINE)}
    return out


def compare_gemma3(tmp: str) -> dict:
    """Gemma 3 on each mesh (per-layer windows, each image's soft tokens both ways): logits and greedy tokens."""
    from mmjax.testing.gemma3_checkpoints import make_tiny_gemma3_checkpoint

    turn = "<start_of_turn>user\n{}<end_of_turn>\n<start_of_turn>model\n"
    prompts = [{"prompt": turn.format("<start_of_image>What is it, in a few words?"),
                "multi_modal_data": {"image": _image(9, (60, 90))}},
               turn.format("Write a poem about the sea, the wind and the long grey evening."),
               {"prompt": turn.format("And this one?<start_of_image>"),
                "multi_modal_data": {"image": _image(10, (40, 40))}},
               turn.format("Count to ten.")]
    # A SigLIP of 4 heads and a 44-wide MLP, split over "model" as LLaVA's CLIP is (``_split_but_replicated``).
    path = make_tiny_gemma3_checkpoint(f"{tmp}/gemma3", seed=4, vision_heads=4, vision_intermediate_size=44)
    return {"logits": compare(path, prompts[0], QWEN_MESHES),
            "generate": compare_generate(path, QWEN_MESHES, prompts, details=False, engine_config=QWEN_ENGINE)}


def compare_int8(path: str, shape: dict) -> dict:
    """An int8 model (``quantization="int8"``, quantized as it is read onto the mesh) against int8 on one
    device: logits, greedy tokens and where the scales live."""
    prompt = PROMPTS[0]
    params = mmjax.SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True)
    single = mmjax.load(path, quantization="int8")
    sharded = mmjax.load(path, mesh=shape, quantization="int8")
    _, want = single.logits(prompt)
    _, got = sharded.logits(prompt)
    tokens = [[list(o.token_ids) for o in mmjax.generate(llm, PROMPTS, params, engine_config=ENGINE)]
              for llm in (single, sharded)]
    return {"max_abs_diff": float(np.abs(got - want).max()), "max_abs": float(np.abs(want).max()),
            "single": tokens[0], "sharded": tokens[1], "shardings": _shardings(sharded)}


def main(tmp: str) -> None:
    import time
    t0 = time.perf_counter()
    results = {"num_devices": jax.device_count()}
    llava = make_tiny_llava_checkpoint(f"{tmp}/llava", head_dim=8, **DIMS, seed=5)
    prompt = {"prompt": "USER: <image>\nWhat is in the picture? ASSISTANT:",
              "multi_modal_data": {"image": _image(0, (30, 30))}}
    results["llava"] = compare(llava, prompt, MESHES)
    try:
        mmjax.load(llava, mesh={"data": 2, "model": 3})
    except ValueError as e:
        results["bad_mesh_error"] = str(e)
    try:
        mmjax.load(llava, mesh={"data": 2, "model": 8})
    except ValueError as e:
        results["too_many_error"] = str(e)
    results["auto_mesh"] = dict(mmjax.load(llava, mesh="auto").mesh.shape)
    results["t_logits"] = time.perf_counter() - t0
    results["generate"] = compare_generate(llava, GENERATE_MESHES)
    results["t_generate"] = time.perf_counter() - t0
    nxt = make_tiny_llava_next_checkpoint(f"{tmp}/next", **DIMS, text_config={"head_dim": 8}, seed=6)
    prompt = {"prompt": "USER: <image>\nDescribe it. ASSISTANT:", "multi_modal_data": {"image": _image(1, (40, 53))}}
    results["llava_next"] = compare(nxt, prompt, MESHES)
    wide = {"prompt": "USER: <image>\nAnd this one? ASSISTANT:", "multi_modal_data": {"image": _image(4, (60, 23))}}
    results["generate_next"] = compare_generate(nxt, GENERATE_MESHES, [prompt, PROMPTS[1], wide, PROMPTS[3]],
                                                details=False, engine_config=NEXT_ENGINE)
    results["caching"] = {"llava": compare_caching(llava, {"data": 2, "model": 4}, ENGINE),
                          "next": compare_caching(nxt, {"data": 2, "model": 4}, NEXT_ENGINE)}
    results["training"] = compare_training(llava, {"data": 4, "model": 2})
    results["int8"] = compare_int8(llava, {"data": 2, "model": 4})
    results["qwen"] = compare_qwen(tmp)
    results["gemma3"] = compare_gemma3(tmp)
    results["t_all"] = time.perf_counter() - t0
    print("RESULTS " + json.dumps(results))


if __name__ == "__main__":
    main(sys.argv[1])
