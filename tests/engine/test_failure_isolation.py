"""One bad request never breaks the engine: faults injected at every stage of a step.

Each fault fires once. Afterwards the engine holds no request, every KV page and
arena row is free, and the next call gives exactly a fresh engine's outputs.
With ``errors="return"`` the failed requests get an output with ``.error`` and
the others finish with a fresh engine's tokens; with ``errors="raise"`` a
``StepError`` propagates.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest

import mmjax
import mmjax.engine.engine as engine_module
from engine_fixtures import LLAVA, load, picture
from mmjax.engine.detokenizer import IncrementalDetokenizer

CONFIG = mmjax.EngineConfig(page_size=8, max_num_seqs=2, max_num_batched_tokens=64, max_model_len=128)
GREEDY = mmjax.SamplingParams(max_tokens=5, temperature=0.0, ignore_eos=True)
# The second request asks for logprobs: steps holding it run the sampler, the others fetch the tokens
# their step computed (``runner.fetch_greedy_tokens``); a fault is injected in each.
PARAMS = [GREEDY, dataclasses.replace(GREEDY, logprobs=1), GREEDY]
PROMPTS = [
    {"prompt": "USER: <image>\nWhat is this? ASSISTANT:", "multi_modal_data": {"image": picture(40, 50, seed=1)}},
    "USER: Tell me a story. ASSISTANT:",
    {"prompt": "USER: <image>\nDescribe it. ASSISTANT:", "multi_modal_data": {"image": picture(60, 30, seed=2)}},
]


class Injected(RuntimeError):
    pass


@pytest.fixture(scope="module")
def llm():
    return load(LLAVA)


@pytest.fixture(scope="module")
def fresh_tokens(llm):
    """Each prompt's greedy tokens from an engine that never failed."""
    return [list(o.token_ids) for o in mmjax.generate(load(LLAVA), PROMPTS, PARAMS, engine_config=CONFIG,
                                                      use_tqdm=False)]


def fail_once(monkeypatch, owner, name, when=lambda *a, **k: True, before=None):
    """Make ``owner.name`` raise ``Injected`` the first time ``when(*args)`` holds."""
    real = getattr(owner, name)
    fired = []

    def faulty(*args, **kwargs):
        if not fired and when(*args, **kwargs):
            fired.append(True)
            if before is not None:
                before()
            raise Injected(f"injected fault in {name}")
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, faulty)
    return fired


def delete_kv_pages(engine):
    def before():
        for x in jax.tree.leaves(engine.runner.kv_pages):
            x.delete()  # as if a donated step died on the device: its pages are gone
    return before


def assert_clean(engine):
    assert not engine.has_unfinished_requests()
    assert all(a.num_free_pages == a.num_pages - 1 for a in engine.allocators)
    assert engine.embedding_rows.num_held == 0
    assert not engine.runner.lost_device_state()


STAGES = {
    # stage: (how to inject, which prompts fail: by index, or "step" for every request of the failing step)
    "encode": lambda mp, engine: fail_once(mp, engine.runner, "encode",
                                           when=lambda mm, replica, rows: len(rows) > 0),
    "schedule": lambda mp, engine: fail_once(mp, engine.scheduler, "schedule"),
    "build_step": lambda mp, engine: fail_once(mp, engine_module, "build_step_batch"),
    "step": lambda mp, engine: fail_once(mp, engine.runner, "execute"),
    "step_lost_pages": lambda mp, engine: fail_once(mp, engine.runner, "execute", before=delete_kv_pages(engine)),
    "sample": lambda mp, engine: fail_once(mp, engine.runner, "sample"),
    "greedy_tokens": lambda mp, engine: fail_once(mp, engine.runner, "fetch_greedy_tokens"),
    "detokenize": lambda mp, engine: fail_once(mp, IncrementalDetokenizer, "append",
                                               when=lambda self, token, **_: "story" in self.tokenizer.decode(
                                                   self._ids)),
}


@pytest.mark.parametrize("stage", list(STAGES))
def test_a_fault_fails_only_what_it_must_and_the_rest_finish(llm, fresh_tokens, monkeypatch, stage):
    engine = llm.engine(CONFIG)
    engine.reset_caches()  # so that the earlier tests' images are encoded and prefilled again
    fired = STAGES[stage](monkeypatch, engine)
    outputs = mmjax.generate(llm, PROMPTS, PARAMS, engine_config=CONFIG, errors="return", use_tqdm=False)
    assert fired, f"the {stage} fault never fired"
    failed = [i for i, o in enumerate(outputs) if o.error is not None]
    assert failed, "some request must have failed"
    for i, out in enumerate(outputs):
        if i in failed:
            assert out.outputs[0].finish_reason == "error" and "Injected: injected fault" in out.error
        else:
            assert list(out.token_ids) == fresh_tokens[i], f"prompt {i} after a {stage} fault"
    if stage in ("encode", "detokenize"):
        assert len(failed) == 1, "a fault caused by one request fails that request alone"
    assert_clean(engine)
    monkeypatch.undo()
    again = mmjax.generate(llm, PROMPTS, PARAMS, engine_config=CONFIG, use_tqdm=False)
    assert [list(o.token_ids) for o in again] == fresh_tokens
    assert_clean(engine)


@pytest.mark.parametrize("stage", ["encode", "step_lost_pages", "sample", "greedy_tokens"])
def test_with_errors_raise_the_error_propagates_and_the_engine_is_clean(llm, fresh_tokens, monkeypatch, stage):
    engine = llm.engine(CONFIG)
    engine.reset_caches()
    STAGES[stage](monkeypatch, engine)
    with pytest.raises(mmjax.StepError, match="Injected: injected fault") as caught:
        mmjax.generate(llm, PROMPTS, PARAMS, engine_config=CONFIG, use_tqdm=False)
    assert isinstance(caught.value.error, Injected) and caught.value.requests
    assert_clean(engine)
    monkeypatch.undo()
    again = mmjax.generate(llm, PROMPTS, PARAMS, engine_config=CONFIG, use_tqdm=False)
    assert [list(o.token_ids) for o in again] == fresh_tokens


def test_ctrl_c_in_a_step_leaves_nothing_behind(llm, fresh_tokens, monkeypatch):
    engine = llm.engine(CONFIG)
    real, calls = engine.runner.execute, []

    def interrupted(batch):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(batch)

    monkeypatch.setattr(engine.runner, "execute", interrupted)
    with pytest.raises(KeyboardInterrupt):
        mmjax.generate(llm, PROMPTS, PARAMS, engine_config=CONFIG, use_tqdm=False)
    assert_clean(engine)
    monkeypatch.undo()
    assert [list(o.token_ids) for o in mmjax.generate(llm, PROMPTS, PARAMS, engine_config=CONFIG,
                                                      use_tqdm=False)] == fresh_tokens


def test_bad_precomputed_embeddings_and_broken_text_are_refused_before_work(llm):
    engine = llm.engine(CONFIG)
    per_image, width = llm.model.config.image_tokens_per_image, llm.model.text_config.hidden_size
    cases = [
        (np.zeros((10, 10), np.float32), r"shape \[%d, %d\] .* got float32\[10, 10\]" % (per_image, width)),
        (np.zeros((5, 5, 3), np.float32), r"got float32\[5, 5, 3\]"),
        (np.zeros((per_image, width), np.int32), r"must be a float array .* got int32"),
        (np.full((per_image, width), np.nan, np.float32), "NaN or infinite"),
    ]
    for embeds, message in cases:
        with pytest.raises(mmjax.PromptError, match=message):
            mmjax.generate(llm, {"prompt": "USER: <image>\nHi ASSISTANT:", "multi_modal_data": {"image": embeds}},
                           GREEDY, engine_config=CONFIG)
    with pytest.raises(mmjax.PromptError, match=r"not valid Unicode: '\\udcff' at character 3"):
        mmjax.generate(llm, "Hi \udcff there", GREEDY, engine_config=CONFIG)
    assert_clean(engine)
    good = np.zeros((per_image, width), np.float32)
    [out] = mmjax.generate(llm, {"prompt": "USER: <image>\nHi ASSISTANT:", "multi_modal_data": {"image": good}},
                           GREEDY, engine_config=CONFIG)
    assert len(out.token_ids) == GREEDY.max_tokens
