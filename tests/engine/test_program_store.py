"""Programs kept traced on disk (``mmjax.engine.program_store``): a later program with the same key loads
the stored one instead of tracing, computes what the traced one does and donates what it donates; any
change to the key's parts traces anew; a damaged file, or a kernel that cannot run, falls back to tracing."""

from __future__ import annotations

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from engine_fixtures import _LLAVA, load, picture
from mmjax.engine import program_store, step
from mmjax.engine.graph_identity import graph_identity
from mmjax.engine.program_store import StoredProgram
from mmjax.kernels_cpu.skinny_matmul import matmul_unavailable, skinny_matmul_cpu


@pytest.fixture
def store(monkeypatch, tmp_path):
    monkeypatch.setenv("MMJAX_PROGRAM_CACHE", str(tmp_path))
    return tmp_path


def _counted(traces: list):
    def run(weights, pages, x, *, double=False):
        traces.append(x.shape)
        y = x @ weights[0] + weights[1]
        y = 2 * y if double else y
        return {"y": y, "pages": pages + jnp.sum(y)}
    return run


def _inputs(rows: int = 2, seed: int = 0):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((4, 3)).astype(np.float32)
    b = rng.standard_normal(3).astype(np.float32)
    x = rng.standard_normal((rows, 4)).astype(np.float32)
    return [jnp.asarray(w), jnp.asarray(b)], x


def _expected(weights, x, pages, double):
    y = np.asarray(x) @ np.asarray(weights[0]) + np.asarray(weights[1])
    y = 2 * y if double else y
    return y, np.asarray(pages) + y.sum()


def test_a_second_program_loads_the_stored_one_instead_of_tracing(store):
    traces = []
    weights, x = _inputs()
    first = StoredProgram(_counted(traces), identity="test", donate_argnums=(1,), static_argnames=("double",))
    out = first(weights, jnp.zeros((2, 5)), x, double=True)
    y, pages = _expected(weights, x, np.zeros((2, 5)), True)
    np.testing.assert_allclose(out["y"], y, rtol=1e-6)
    assert len(list(store.glob("*.exported"))) == 1
    traced = len(traces)

    second = StoredProgram(_counted(traces), identity="test", donate_argnums=(1,), static_argnames=("double",))
    donated = jnp.ones((2, 5))
    out = second(weights, donated, x, double=True)
    assert len(traces) == traced  # loaded, not traced
    assert donated.is_deleted()
    y, pages = _expected(weights, x, np.ones((2, 5)), True)
    assert set(out) == {"y", "pages"}
    np.testing.assert_allclose(out["y"], y, rtol=1e-6)
    np.testing.assert_allclose(out["pages"], pages, rtol=1e-5)
    again = second(weights, out["pages"], x, double=True)  # the next call: the same loaded program
    np.testing.assert_allclose(again["pages"], pages + y.sum(), rtol=1e-5)
    assert len(traces) == traced


@pytest.mark.parametrize("change", ["identity", "shape", "static", "environment", "dtype"])
def test_any_change_to_the_key_traces_anew(store, monkeypatch, change):
    traces = []
    weights, x = _inputs()
    make = lambda identity="test": StoredProgram(_counted(traces), identity=identity,  # noqa: E731
                                                 static_argnames=("double",))
    make()(weights, jnp.zeros((2, 5)), x)
    traced = len(traces)
    identity, double, pages = "test", False, jnp.zeros((2, 5))
    if change == "identity":
        identity = "another model"
    elif change == "shape":
        weights, x = _inputs(rows=3)
        pages = jnp.zeros((3, 5))
    elif change == "static":
        double = True
    elif change == "environment":
        monkeypatch.setenv("MMJAX_CPU_KERNEL", "0")
    else:
        pages = jnp.zeros((2, 5), jnp.bfloat16)
    out = make(identity)(weights, pages, x, double=double)
    assert len(traces) > traced
    y, want = _expected(weights, x, np.asarray(pages, np.float32), double)
    np.testing.assert_allclose(out["y"], y, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(out["pages"], np.float32), want, rtol=1e-2)


def test_switched_off_nothing_is_stored_or_loaded(monkeypatch, tmp_path):
    monkeypatch.setenv("MMJAX_PROGRAM_CACHE", "0")
    traces = []
    weights, x = _inputs()
    for _ in range(2):
        StoredProgram(_counted(traces), identity="test")(weights, jnp.zeros((2, 5)), x)
    assert len(traces) == 2 and not list(tmp_path.iterdir())


def test_a_damaged_file_is_traced_and_stored_again(store):
    traces = []
    weights, x = _inputs()
    StoredProgram(_counted(traces), identity="test")(weights, jnp.zeros((2, 5)), x)
    (path,) = store.glob("*.exported")
    path.write_bytes(path.read_bytes()[:100])
    traced = len(traces)
    out = StoredProgram(_counted(traces), identity="test")(weights, jnp.zeros((2, 5)), x)
    assert len(traces) > traced
    np.testing.assert_allclose(out["y"], _expected(weights, x, np.zeros((2, 5)), False)[0], rtol=1e-6)
    traced = len(traces)
    StoredProgram(_counted(traces), identity="test")(weights, jnp.zeros((2, 5)), x)
    assert len(traces) == traced  # the file written again is whole


def test_a_stored_program_registers_its_kernels_and_traces_where_one_cannot_run(store, monkeypatch):
    assert matmul_unavailable(jnp.float32) is None
    traces = []

    def run(w, x):
        traces.append(1)
        return skinny_matmul_cpu(x, w)

    rng = np.random.default_rng(3)
    w = jnp.asarray(rng.standard_normal((64, 48)), jnp.float32)
    x = jnp.asarray(rng.standard_normal((2, 64)), jnp.float32)
    StoredProgram(run, identity="kernel")(w, x)
    traced = len(traces)
    registered = []
    monkeypatch.setattr(program_store, "register", lambda target, *a: registered.append(target))
    got = StoredProgram(run, identity="kernel")(w, x)
    assert len(traces) == traced and registered == ["mmjax_skinny_matmul"]
    np.testing.assert_allclose(got, np.asarray(x) @ np.asarray(w), rtol=1e-5, atol=1e-5)

    monkeypatch.setattr(program_store, "register", lambda *a: "no C++ compiler found")
    got = StoredProgram(run, identity="kernel")(w, x)
    assert len(traces) > traced  # the kernel cannot run here: traced anew
    np.testing.assert_allclose(got, np.asarray(x) @ np.asarray(w), rtol=1e-5, atol=1e-5)


def test_a_new_engine_generates_the_same_tokens_from_stored_programs(store, monkeypatch):
    import mmjax

    prompt = {"prompt": "USER: <image>\nWhat is this? ASSISTANT:", "multi_modal_data": {"image": picture(30, 40)}}
    params = mmjax.SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)
    first = mmjax.generate(load(_LLAVA), prompt, params, use_tqdm=False)[0].outputs[0].token_ids
    assert list(store.glob("*.exported"))

    step.step_program.cache_clear()  # as in a new process: no program in memory
    step.encoder_program.cache_clear()
    traced = []
    real = step.step_logits
    monkeypatch.setattr(step, "step_logits", lambda *a, **k: traced.append(1) or real(*a, **k))
    second = mmjax.generate(load(_LLAVA), prompt, params, use_tqdm=False)[0].outputs[0].token_ids
    assert traced == []  # every step program came from the store
    assert second == first
    jax.clear_caches()


def test_nothing_compiles_after_warmup_with_the_store_on(store):
    """The programs warm-up runs are the ones requests run: the same arguments' commitment too (a fresh,
    uncommitted arena once made the first encode after warm-up compile a second encoder program)."""
    import mmjax
    from mmjax.engine import count_compilations

    llm = load(_LLAVA)
    config = mmjax.EngineConfig(page_size=8, max_num_seqs=2, max_num_batched_tokens=64, max_model_len=128)
    llm.engine(config).warmup(prompt_logprobs=False)
    prompts = [{"prompt": "USER: <image>\nWhat is this? ASSISTANT:", "multi_modal_data": {"image": picture(30, 40)}},
               "USER: Hi ASSISTANT:"]
    with count_compilations() as compiled:
        mmjax.generate(llm, prompts, mmjax.SamplingParams(temperature=0.0, max_tokens=4), engine_config=config,
                       use_tqdm=False)
    assert compiled[0] == 0
    jax.clear_caches()


def test_a_models_identity_is_the_same_in_every_process_and_names_its_functions():
    code = ("import sys; sys.path.insert(0, {tests!r}); from engine_fixtures import load, _LLAVA; "
            "from flax import nnx; from mmjax.engine.graph_identity import graph_identity; "
            "print(graph_identity(nnx.graphdef(load(_LLAVA).model)))")
    tests = os.path.dirname(os.path.abspath(__file__))
    outs = [subprocess.run([sys.executable, "-c", code.format(tests=tests)], capture_output=True, text=True,
                           check=True).stdout for _ in range(2)]
    assert outs[0] == outs[1] and " at 0x" not in outs[0]
    vocab = load(_LLAVA).hf_config.text_config.vocab_size
    assert "<function flax.nnx.nn.dtypes.promote_dtype>" in outs[0]  # named, not addressed
    assert f"('num_embeddings', Static(value={vocab}))" in outs[0]  # the config's values are in it


def test_programs_of_a_model_class_outside_mmjax_are_never_stored(store):
    from flax import nnx

    class UsersOwnLayer(nnx.Module):  # e.g. a notebook's: its code is in no key
        def __init__(self):
            self.dense = nnx.Linear(2, 2, rngs=nnx.Rngs(0))

    assert graph_identity(nnx.graphdef(UsersOwnLayer())) is None
    traces = []
    weights, x = _inputs()
    for _ in range(2):
        StoredProgram(_counted(traces), identity="test", storable=False)(weights, jnp.zeros((2, 5)), x)
    assert len(traces) == 2 and not list(store.iterdir())
