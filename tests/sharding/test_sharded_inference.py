"""Sharded LLaVA on 8 CPU devices, in a subprocess (this process's jax already has 1 device)."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys

import numpy as np
import pytest

WORKER = os.path.join(os.path.dirname(__file__), "sharded_worker.py")


@functools.cache
def _results(tmp: str) -> dict:
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu",
               MMJAX_COMPILATION_CACHE=os.environ["MMJAX_WORKER_COMPILATION_CACHE"])
    proc = subprocess.run([sys.executable, WORKER, tmp], env=env, capture_output=True, text=True, timeout=1200,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = next(line for line in proc.stdout.splitlines() if line.startswith("RESULTS "))
    return json.loads(line[len("RESULTS "):])


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict:
    return _results(str(tmp_path_factory.mktemp("sharded")))


def test_the_worker_sees_eight_devices(results):
    assert results["num_devices"] == 8


ALL = [(model, mesh) for model in ("llava", "llava_next") for mesh in ("1x8", "2x4", "4x2")]


@pytest.mark.parametrize("model, mesh", ALL)
def test_sharded_logits_equal_single_device_logits(results, model, mesh):
    r = results[model][mesh]
    assert r["mesh_devices"] == 8
    assert r["max_abs_diff"] <= 1e-5 * max(1.0, r["max_abs"]), r["max_abs_diff"]


@pytest.mark.parametrize("model, mesh", ALL)
def test_no_weight_that_should_be_split_is_replicated(results, model, mesh):
    assert results[model][mesh]["split_but_replicated"] == []


#: (parameter, spec on 2x4 (2 KV heads < 4: k/v replicated), spec on 4x2 (k/v split)).
EXPECTED = [
    ("language_model/embed_tokens/embedding", "P('model', None)", "P('model', None)"),
    ("language_model/lm_head/kernel", "P(None, 'model')", "P(None, 'model')"),
    ("language_model/layers/1/self_attn/q_proj/kernel", "P(None, 'model')", "P(None, 'model')"),
    ("language_model/layers/1/self_attn/k_proj/kernel", "P()", "P(None, 'model')"),
    ("language_model/layers/1/self_attn/v_proj/kernel", "P()", "P(None, 'model')"),
    ("language_model/layers/1/self_attn/o_proj/kernel", "P('model', None)", "P('model', None)"),
    ("language_model/layers/0/mlp/gate_proj/kernel", "P(None, 'model')", "P(None, 'model')"),
    ("language_model/layers/0/mlp/up_proj/kernel", "P(None, 'model')", "P(None, 'model')"),
    ("language_model/layers/0/mlp/down_proj/kernel", "P('model', None)", "P('model', None)"),
    ("language_model/layers/0/input_layernorm/weight", "P()", "P()"),
    ("language_model/norm/weight", "P()", "P()"),
    ("vision_tower/layers/0/self_attn/q_proj/kernel", "P(None, 'model')", "P(None, 'model')"),  # 4 heads
    ("vision_tower/layers/0/mlp/fc2/kernel", "P('model', None)", "P('model', None)"),
    ("vision_tower/layers/0/layer_norm1/scale", "P()", "P()"),
    ("multi_modal_projector/linear_1/kernel", "P()", "P()"),
]


@pytest.mark.parametrize("name, on_2x4, on_4x2", EXPECTED)
def test_where_each_weight_lives(results, name, on_2x4, on_4x2):
    assert results["llava"]["2x4"]["shardings"][name] == on_2x4
    assert results["llava"]["4x2"]["shardings"][name] == on_4x2


def test_the_vision_tower_is_replicated_when_its_heads_do_not_divide_and_the_projector_always(results):
    for model in ("llava", "llava_next"):
        wide = results[model]["1x8"]["shardings"]  # 4 vision heads over 8 devices: replicated
        others = {n: s for n, s in wide.items() if not n.startswith("language_model/")}
        assert others and all(s == "P()" for s in others.values()), others
        split = results[model]["2x4"]["shardings"]
        assert all(s == "P()" for n, s in split.items() if n.startswith("multi_modal_projector/"))


def test_a_model_axis_that_does_not_divide_the_heads_is_refused_by_name(results):
    message = results["bad_mesh_error"]
    assert "attention heads" in message and "8 % 3" in message


def test_a_mesh_larger_than_the_devices_is_refused(results):
    assert "needs 16 devices; only 8 exist" in results["too_many_error"]


def test_auto_mesh_keeps_kv_heads_whole(results):
    assert results["auto_mesh"] == {"data": 4, "model": 2}  # 2 KV heads


# -- the engine on a mesh: KV pages split over KV heads ----------------------------------------------


@pytest.mark.parametrize("model, mesh", [(model, mesh) for model in ("generate", "generate_next")
                                         for mesh in ("4x2", "1x8", "2x4")])
def test_sharded_generate_equals_single_device_greedy_tokens(results, model, mesh):
    generated = results[model]
    assert generated[mesh]["tokens"] == generated["single"]
    assert all(len(tokens) == 6 for tokens in generated["single"])
    replicas = int(mesh[0])
    assert len(generated[mesh]["tokens_per_replica"]) == replicas
    assert all(n > 0 for n in generated[mesh]["tokens_per_replica"])  # every replica served a request


@pytest.mark.parametrize("model", ["llava", "next"])
def test_caches_on_a_mesh_give_the_tokens_of_one_device_without_caches(results, model):
    found = results["caching"][model]
    assert found["on"][0] == found["off"] and found["on"][1] == found["off"]
    prefix = found["caches"]["prefix_cache"]
    assert prefix["hits"] > 0 and prefix["cached_pages"] > 0
    first, second = found["encoder_calls"], found["prefill_tokens"]
    assert first[1] < first[0] and second[1] < second[0] / 2, found  # the second call reused the first's work


def test_nothing_compiles_after_warmup_on_a_mesh(results):
    warm = results["generate"]["warm"]  # 2x4: steps over both replicas, each replica's image encoder
    assert warm["compilations"] == 0
    assert warm["tokens"] == results["generate"]["single"]


def test_logprobs_and_prompt_logprobs_on_two_replicas_equal_one_device(results):
    r = results["generate"]["logprobs"]  # 2x4: one request per replica, rows read from both
    assert r["same_ids"] and r["count"] > 20
    assert r["max_diff"] <= 1e-4
    assert all(n > 0 for n in r["tokens_per_replica"])


def test_a_replica_encodes_images_on_its_own_devices_only(results):
    warm = results["generate"]["warm"]
    assert warm["encoded_on"] == warm["replica_1"] and len(warm["encoded_on"]) == 4


def test_the_pallas_kernel_runs_per_device_inside_shard_map(results):
    generated = results["generate"]  # on 2x4, interpret mode: the TPU/GPU wiring of the engine
    assert generated["pallas"] == [tokens[:3] for tokens in generated["single"][1:]]


def test_kv_pages_are_split_over_replicas_and_kv_heads(results):
    split, replicated = results["generate"]["4x2"], results["generate"]["2x4"]
    # 4 replicas x 37 pages; 2 KV heads over 2 model devices: each device holds 1/8 of the cache.
    assert split["kv_spec"] == "P('model', 'data')" and split["kv_shape"] == [2, 148, 8, 8]
    assert split["kv_shards"] == ["(1, 37, 8, 8)"]
    # 2 KV heads < 4 model devices: heads replicated like k/v_proj, pages still split over the 2 replicas.
    assert replicated["kv_spec"] == "P(None, 'data')" and replicated["kv_shape"] == [2, 74, 8, 8]
    assert replicated["kv_shards"] == ["(2, 37, 8, 8)"]


@pytest.mark.parametrize("mesh, replicas", [("4x2", 4), ("2x4", 2)])
def test_requests_are_scheduled_over_the_data_axis(results, mesh, replicas):
    r = results["generate"][mesh]
    assert r["input_ids_sharding"] == "P('data',)"  # each device runs its own replica's tokens
    assert len(r["tokens_per_replica"]) == replicas and all(n > 0 for n in r["tokens_per_replica"])
    assert r["pages_free"] == [True] * replicas  # every replica got all its pages back


@pytest.mark.parametrize("mesh", ["4x2", "2x4"])
def test_the_memory_plan_counts_one_devices_share(results, mesh):
    r = results["generate"][mesh]
    assert r["plan_weights"] == r["measured_weights"]  # the device's shards, not the whole model
    assert r["plan_page_bytes"] == r["measured_kv_per_page"]  # one page of one replica on one device
    assert r["plan_pages"] == 37 and "37 pages" in r["plan_describe"] and "data replicas" in r["plan_describe"]


def test_the_compiled_step_never_gathers_the_kv_cache(results):
    split = results["generate"]["4x2"]
    assert split["kv_collectives"] == [] and results["generate"]["2x4"]["kv_collectives"] == []
    for mesh in ("4x2", "2x4"):  # attention is per device (shard_map): a step needs only all-reduces
        assert results["generate"][mesh]["all_gathers"] == 0, mesh
    assert split["collectives"] > 0  # the partitioner did split the step


def test_the_collective_scan_sees_a_kv_all_gather():
    import importlib.util

    spec = importlib.util.spec_from_file_location("sharded_worker", WORKER)
    worker = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(worker)
    hlo = ("  %all-gather.3 = f32[2,37,8,8]{3,2,1,0} all-gather(%p), dimensions={0}\n"
           "  %all-reduce = f32[1,16,40]{2,1,0} all-reduce(%x), to_apply=%add\n")
    found = worker.scan_collectives(hlo, num_pages={37})
    assert found["all_gathers"] == 1 and found["collectives"] == 2 and len(found["kv_collectives"]) == 1


def test_data_parallel_training_equals_one_device(results):
    r = results["training"]  # 3 SGD steps, batch 8 split over data=4 (model=2), against one device
    np.testing.assert_allclose(r["losses"], r["single_losses"], rtol=1e-5)
    assert r["max_weight_diff"] <= 1e-5 and r["moved"] > 1e-4  # the same update, and a real one


# -- Qwen-VL on a mesh (M-RoPE positions, Qwen3-VL's DeepStack rows in the replicas' arenas) ---------------


@pytest.mark.parametrize("family, mesh", [(f, m) for f in ("qwen2_5_vl", "qwen3_vl") for m in ("2x4", "4x2")])
def test_qwen_on_a_mesh_equals_one_device(results, family, mesh):
    found = results["qwen"][family]
    logits = found["logits"][mesh]
    assert logits["mesh_devices"] == 8 and logits["split_but_replicated"] == []
    assert logits["max_abs_diff"] <= 1e-5 * max(1.0, logits["max_abs"]), logits["max_abs_diff"]
    assert logits["shardings"]["language_model/layers/0/self_attn/q_proj/kernel"] == "P(None, 'model')"
    assert all(spec == "P()" for name, spec in logits["shardings"].items() if name.startswith("visual/"))
    generated = found["generate"]
    assert generated[mesh]["tokens"] == generated["single"]
    assert all(len(tokens) == 6 for tokens in generated["single"])
    assert all(n > 0 for n in generated[mesh]["tokens_per_replica"])


# -- Gemma 3 on a mesh (per-layer sliding windows, bidirectional image spans in each replica's metadata) -------


@pytest.mark.parametrize("mesh", ["2x4", "4x2"])
def test_gemma3_on_a_mesh_equals_one_device(results, mesh):
    found = results["gemma3"]
    logits = found["logits"][mesh]
    assert logits["mesh_devices"] == 8 and logits["split_but_replicated"] == []
    assert logits["max_abs_diff"] <= 1e-5 * max(1.0, logits["max_abs"]), logits["max_abs_diff"]
    assert logits["shardings"]["language_model/layers/0/self_attn/q_proj/kernel"] == "P(None, 'model')"
    assert logits["shardings"]["language_model/layers/0/pre_feedforward_layernorm/weight"] == "P()"
    assert logits["shardings"]["vision_tower/layers/0/self_attn/q_proj/kernel"] == "P(None, 'model')"
    generated = found["generate"]
    assert generated[mesh]["tokens"] == generated["single"]
    assert all(len(tokens) == 6 for tokens in generated["single"])
    assert all(n > 0 for n in generated[mesh]["tokens_per_replica"])


# -- int8 weights on a mesh (quantized as they are read onto the devices; scales split like the outputs) --------


def test_int8_on_a_mesh_equals_int8_on_one_device(results):
    found = results["int8"]
    assert found["max_abs_diff"] <= 1e-5 * max(1.0, found["max_abs"]), found["max_abs_diff"]
    assert found["sharded"] == found["single"] and all(len(t) == 6 for t in found["single"])
    specs = found["shardings"]
    assert specs["language_model/layers/0/self_attn/q_proj/kernel"] == "P(None, 'model')"
    assert specs["language_model/layers/0/self_attn/q_proj/kernel_scale"] == "P('model',)"
    assert specs["language_model/layers/0/mlp/down_proj/kernel"] == "P('model', None)"
    assert specs["language_model/layers/0/mlp/down_proj/kernel_scale"] == "P()"
    assert specs["language_model/lm_head/kernel_scale"] == "P('model',)"
