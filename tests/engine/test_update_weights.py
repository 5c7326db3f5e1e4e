"""``LLMEngine.update_weights`` / ``LLM.update_weights``: new weights into a built engine.

The reference for the engine after an update is a freshly built engine on the new weights; the
new weights are the old ones with noise added, so that the test would fail were the update a no-op.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mmjax
from engine_fixtures import LLAVA, TIED, load, picture
from mmjax.engine import count_compilations

CONFIG = mmjax.EngineConfig(page_size=8, max_num_seqs=4, max_num_batched_tokens=64, max_model_len=128)
GREEDY = mmjax.SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)
IMAGE_PROMPT = {"prompt": "USER: <image>\nWhat is shown in this image? ASSISTANT:",
                "multi_modal_data": {"image": picture(50, 80, seed=7)}}
PROMPTS = [IMAGE_PROMPT, "USER: Tell me a short story about a red circle. ASSISTANT:"]


def perturbed(llm: mmjax.LLM, scale: float = 0.05, seed: int = 0) -> mmjax.LLM:
    """A new handle on ``llm``'s model with noise added to every float parameter (its own buffers)."""
    rng = np.random.default_rng(seed)

    def noisy(x: jax.Array) -> jax.Array:
        if not jnp.issubdtype(x.dtype, jnp.floating):
            return jnp.array(x, copy=True)
        return jnp.asarray(np.asarray(x) + rng.normal(0.0, scale, x.shape).astype(x.dtype))

    return dataclasses.replace(llm, state=jax.tree.map(noisy, llm.state), _engine=[], _mappers={})


def token_ids(llm: mmjax.LLM) -> list[tuple[int, ...]]:
    return [tuple(o.token_ids) for o in mmjax.generate(llm, PROMPTS, GREEDY, engine_config=CONFIG, use_tqdm=False)]


@pytest.fixture(scope="module")
def old_tokens() -> list[tuple[int, ...]]:
    """The greedy tokens of the checkpoint's own weights (compiles the programs every test runs)."""
    return token_ids(load(LLAVA))


@pytest.fixture(scope="module")
def new_weights() -> mmjax.LLM:
    return perturbed(load(LLAVA))


@pytest.fixture(scope="module")
def new_tokens(new_weights: mmjax.LLM) -> list[tuple[int, ...]]:
    """A freshly built engine's greedy tokens on the new weights."""
    return token_ids(new_weights)


def test_update_then_generate_equals_a_fresh_engine_without_compiling(old_tokens, new_weights, new_tokens):
    assert new_tokens != old_tokens  # else the test could not tell an update from a no-op
    llm = load(LLAVA)
    assert token_ids(llm) == old_tokens
    engine = llm.engine()
    before = engine.cache_stats()
    assert before["prefix_cache"]["cached_pages"] > 0 and before["encoder_cache"]["entries"] > 0
    assert before["processor_cache"]["entries"] > 0
    num_pages, shapes = engine.runner.num_pages, jax.tree.map(jnp.shape, engine.runner.kv_pages)
    source = dataclasses.replace(new_weights, state=jax.tree.map(lambda x: jnp.array(x, copy=True),
                                                                 new_weights.state))
    with count_compilations() as compiled:
        engine.update_weights(source)
        after = engine.cache_stats()
        for leaf in jax.tree.leaves(source.state):  # the engine holds copies: the source's buffers may go
            leaf.delete()
        assert token_ids(llm) == new_tokens
    assert compiled[0] == 0, f"{compiled[0]} programs compiled by the update and the generate after it"
    assert llm.engine() is engine
    assert after["prefix_cache"]["cached_pages"] == 0 and after["prefix_cache"]["bytes"] == 0
    assert after["encoder_cache"]["entries"] == 0 and after["encoder_cache"]["rows"] == 0
    assert after["processor_cache"] == before["processor_cache"]  # mapped inputs do not depend on the weights
    assert engine.runner.num_pages == num_pages
    assert jax.tree.map(jnp.shape, engine.runner.kv_pages) == shapes
    assert engine.llm.state is engine.runner.state  # the handle serves what the engine serves


def test_the_weights_mmjax_train_returns(old_tokens):
    """The issue's use: train, then serve the trained weights from the engine already built."""
    import optax

    llm = load(LLAVA)
    engine = llm.engine(CONFIG)
    examples = [mmjax.TrainExample(IMAGE_PROMPT, " a red circle"), mmjax.TrainExample(PROMPTS[1], " Once upon")]
    result = mmjax.train(llm, examples, steps=2, batch_size=2, trainable="projector", optimizer=optax.adam(1e-2),
                         use_tqdm=False)
    trained = token_ids(result.llm)  # a freshly built engine on the trained weights
    assert trained[0] != old_tokens[0] and trained[1] == old_tokens[1]  # the projector reads only images
    with count_compilations() as compiled:
        llm.update_weights(result.llm)
        assert token_ids(llm) == trained
    assert compiled[0] == 0
    assert llm.engine() is engine


def test_the_kv_pool_is_not_reallocated(new_weights):
    llm = load(LLAVA)
    engine = llm.engine(CONFIG)
    pages, arenas = engine.runner.kv_pages, dict(engine.runner._arenas)
    engine.update_weights(new_weights)
    assert engine.runner.kv_pages is pages
    assert all(engine.runner._arenas[r] is a for r, a in arenas.items())


@pytest.fixture(scope="module")
def wider(tmp_path_factory) -> mmjax.LLM:
    """A tiny LLaVA of another config: a wider MLP."""
    from mmjax.testing.checkpoints import make_tiny_llava_checkpoint

    path = make_tiny_llava_checkpoint(tmp_path_factory.mktemp("wider") / "llava", intermediate_size=56, seed=11)
    return mmjax.load(path, limit_mm_per_prompt={"image": 2})


@pytest.fixture(scope="module")
def other_eps(tmp_path_factory) -> mmjax.LLM:
    """The checkpoint's weights in a model whose RMSNorm epsilon differs (the same shapes, another graph)."""
    from mmjax.testing.checkpoints import make_tiny_llava_checkpoint

    path = make_tiny_llava_checkpoint(tmp_path_factory.mktemp("eps") / "llava", seed=11,
                                      text_config={"rms_norm_eps": 1e-3})
    return mmjax.load(path, limit_mm_per_prompt={"image": 2})


def test_a_source_that_does_not_fit_is_refused_and_nothing_changes(old_tokens, wider, other_eps):
    from mmjax.training import TrainResult

    llm = load(LLAVA)
    engine = llm.engine(CONFIG)
    state = llm.state
    with pytest.raises(ValueError, match=r"'language_model/layers/0/mlp/down_proj/kernel'.*float32\[56, 40\].*"
                                         r"float32\[52, 40\]"):
        engine.update_weights(wider)
    bf16 = dataclasses.replace(llm, state=jax.tree.map(lambda x: x.astype(jnp.bfloat16), llm.state), _engine=[])
    with pytest.raises(ValueError, match="bfloat16"):
        llm.update_weights(bf16)
    with pytest.raises(ValueError, match="another architecture: their model lacks parameter '.*lm_head"):
        engine.update_weights(load(TIED))  # tied embeddings: no LM head of its own
    with pytest.raises(ValueError, match=r"static configuration differs.*text_config.rms_norm_eps: 1e-06 -> 0.001"):
        engine.update_weights(other_eps)
    with pytest.raises(TypeError, match=r"pass its \.llm"):
        engine.update_weights(TrainResult(llm, [0.0], 0.0))
    with pytest.raises(TypeError, match="got dict"):
        llm.update_weights({"state": llm.state})
    assert llm.state is state and engine.runner.state is state
    assert token_ids(llm) == old_tokens


def test_refused_while_a_request_runs_then_applied(old_tokens, new_weights, new_tokens):
    llm = load(LLAVA)
    engine = llm.engine(CONFIG)
    request = engine.add_request(IMAGE_PROMPT, GREEDY)
    with pytest.raises(RuntimeError, match=r"0 request\(s\) are running and 1 waiting; step them to completion"):
        engine.update_weights(new_weights)
    engine.step()
    assert not request.finished
    with pytest.raises(RuntimeError, match=r"1 request\(s\) are running and 0 waiting"):
        engine.update_weights(new_weights)
    while engine.has_unfinished_requests():
        engine.step()
    assert tuple(request.output_token_ids) == old_tokens[0]  # it finished on the weights it started with
    engine.update_weights(new_weights)
    assert token_ids(llm) == new_tokens


def test_llm_update_weights_keeps_logits_generate_and_engine_consistent(new_weights, new_tokens):
    llm = load(LLAVA)  # no engine yet: only the handle's state changes
    _, old = llm.logits(IMAGE_PROMPT)
    llm.update_weights(new_weights)
    _, logits = llm.logits(IMAGE_PROMPT)
    _, expected = new_weights.logits(IMAGE_PROMPT)
    np.testing.assert_array_equal(logits, expected)
    assert not np.allclose(logits, old)
    assert token_ids(llm) == new_tokens  # the engine built now has the new weights

    llm.update_weights(load(LLAVA))  # with an engine built: both change
    with count_compilations() as compiled:
        _, back = llm.logits(IMAGE_PROMPT)
    np.testing.assert_array_equal(back, old)
    assert compiled[0] == 0
    assert llm.engine().runner.state is llm.state


def test_on_a_mesh_each_leaf_keeps_its_sharding_and_each_replica_encodes_with_the_new_weights(tmp_path):
    """On a 2 x 2 mesh of CPU devices (a subprocess: this one's jax has one device), the source loaded on one
    device: the engine reshards it as its own weights, and each data replica's view of them (the encoder's
    weights) is rebuilt."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu",
               MMJAX_COMPILATION_CACHE=os.environ.get("MMJAX_WORKER_COMPILATION_CACHE", "0"),
               PYTHONPATH=os.pathsep.join([os.path.dirname(__file__), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, __file__, str(tmp_path)], env=env, capture_output=True, text=True,
                          timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))[7:])
    assert result["new"] != result["old"]
    assert result["new"] == result["fresh"]
    assert result["compiled"] == 0
    assert result["placed_as_before"]


def _mesh_worker(tmp: str) -> dict:
    """The mesh test's work, in its subprocess: heads that a "model" axis of 2 divides."""
    from mmjax.testing.checkpoints import make_tiny_llava_checkpoint

    path = make_tiny_llava_checkpoint(f"{tmp}/llava", head_dim=8, num_heads=8, num_kv_heads=2, intermediate_size=56,
                                      seed=5)
    load_on = lambda mesh: mmjax.load(path, mesh=mesh, limit_mm_per_prompt={"image": 2})  # noqa: E731
    llm = load_on({"data": 2, "model": 2})
    old = token_ids(llm)
    placement = [(x.sharding, x.committed) for x in jax.tree.leaves(llm.state)]
    source = perturbed(load_on(None))  # on one device
    fresh = load_on({"data": 2, "model": 2})
    fresh.update_weights(source)  # no engine yet: the handle's state, then an engine built on it
    fresh_tokens = token_ids(fresh)
    with count_compilations() as compiled:
        llm.engine().update_weights(source)
        new = token_ids(llm)
    placed = [(x.sharding, x.committed) for x in jax.tree.leaves(llm.state)]
    return {"old": old, "new": new, "fresh": fresh_tokens, "compiled": compiled[0],
            "placed_as_before": placed == placement}


if __name__ == "__main__":
    print("RESULT " + json.dumps(_mesh_worker(sys.argv[1])))
