"""Sampling parameters a step cannot hold fail their own request, not the step's others: offline with
``errors="return"`` the good prompts keep their answers; and a top_k past int32 (which once overflowed
the sampler's arrays and failed the whole step) now samples as top_k off does."""

from __future__ import annotations

import mmjax
from mmjax.engine.sampler import SamplingTensors
from tests.engine.engine_fixtures import LLAVA, load

PROMPTS = ["USER: Write about the sea. ASSISTANT:", "USER: Count to five. ASSISTANT:"]
CONFIG = mmjax.EngineConfig(page_size=8, max_num_seqs=4, max_num_batched_tokens=256, max_model_len=512)


def _params(seed: int, **kwargs) -> mmjax.SamplingParams:
    return mmjax.SamplingParams(temperature=0.8, max_tokens=6, seed=seed, ignore_eos=True, **kwargs)


def test_a_request_whose_parameters_fail_in_the_step_fails_alone(monkeypatch):
    llm = load(LLAVA)
    want = mmjax.generate(llm, PROMPTS[:1], _params(1), engine_config=CONFIG, use_tqdm=False)[0]
    real = SamplingTensors.build

    def build(params, *args, **kwargs):
        if any(p.seed == 666 for p in params):
            raise OverflowError("injected: a parameter the sampler cannot hold")
        return real(params, *args, **kwargs)

    monkeypatch.setattr(SamplingTensors, "build", staticmethod(build))
    good, bad = mmjax.generate(llm, PROMPTS, [_params(1), _params(666)], engine_config=CONFIG, use_tqdm=False,
                               errors="return")
    assert good.error is None and good.token_ids == want.token_ids
    assert bad.finish_reason == "error" and "OverflowError" in bad.error


def test_top_k_past_int32_samples_as_top_k_off():
    llm = load(LLAVA)
    huge, off = (mmjax.generate(llm, PROMPTS, _params(3, top_k=k), engine_config=CONFIG, use_tqdm=False)
                 for k in (2**40, -1))
    assert [o.token_ids for o in huge] == [o.token_ids for o in off]
