"""SamplingParams: vLLM's defaults, normalisation, and a clear error for every bad field."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from mmjax.engine.sampling_params import MAX_LOGPROBS, SamplingParams


def test_defaults_match_vllm():
    p = SamplingParams()
    assert (p.n, p.max_tokens, p.temperature, p.top_k, p.top_p, p.seed) == (1, 16, 1.0, -1, 1.0, None)
    assert (p.stop, p.stop_token_ids, p.logprobs, p.prompt_logprobs) == ((), (), None, None)
    assert not p.ignore_eos and not p.include_stop_str_in_output and p.skip_special_tokens
    assert not p.is_greedy and p.max_stop_len == 0
    assert (p.min_p, p.presence_penalty, p.frequency_penalty, p.repetition_penalty) == (0.0, 0.0, 0.0, 1.0)
    assert not p.has_penalties and SamplingParams(repetition_penalty=1.2).has_penalties


def test_frozen_keyword_only_hashable():
    p = SamplingParams(stop=["a", "bc"], stop_token_ids=[7, 9])
    assert p.stop == ("a", "bc") and p.stop_token_ids == (7, 9) and p.max_stop_len == 2
    assert hash(p) == hash(SamplingParams(stop=("a", "bc"), stop_token_ids=(7, 9)))
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.temperature = 0.5
    with pytest.raises(TypeError):
        SamplingParams(1)  # keyword-only


def test_normalisation():
    assert SamplingParams(stop="###").stop == ("###",)
    p = SamplingParams(temperature=1, top_p=1, max_tokens=np.int64(5), seed=np.int32(3))
    assert isinstance(p.temperature, float) and type(p.max_tokens) is int and type(p.seed) is int
    assert SamplingParams(temperature=0).is_greedy and SamplingParams(temperature=1e-6).is_greedy
    g = SamplingParams.greedy(max_tokens=3)
    assert g.temperature == 0.0 and g.max_tokens == 3 and g.is_greedy
    assert SamplingParams(logprobs=0).logprobs == 0
    assert SamplingParams(logprobs=MAX_LOGPROBS, prompt_logprobs=MAX_LOGPROBS).prompt_logprobs == 20


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"n": 2}, r"n=2: only n=1"),
        ({"n": 1.0}, r"n=1.0: must be an int"),
        ({"max_tokens": 0}, r"max_tokens=0: must be >= 1"),
        ({"max_tokens": True}, r"max_tokens=True: must be an int, got bool"),
        ({"max_tokens": "8"}, r"max_tokens='8': must be an int, got str"),
        ({"temperature": -0.1}, r"temperature=-0.1: must be >= 0"),
        ({"temperature": float("nan")}, r"temperature=nan: must be finite"),
        ({"temperature": "hot"}, r"temperature='hot': must be a float"),
        ({"top_k": -2}, r"top_k=-2: must be >= -1 \(-1 or 0 disables top-k\)"),
        ({"top_k": 2.5}, r"top_k=2.5: must be an int"),
        ({"top_p": 0.0}, r"top_p=0.0: must be in \(0, 1\]"),
        ({"top_p": 1.5}, r"top_p=1.5: must be in \(0, 1\]"),
        ({"top_p": float("inf")}, r"top_p=inf: must be finite"),
        ({"seed": 1.5}, r"seed=1.5: must be an int, got float"),
        ({"seed": "42"}, r"seed='42': must be an int"),
        ({"stop": ""}, r"stop='': stop strings must be non-empty"),
        ({"stop": ["a", ""]}, r"stop=\['a', ''\]: stop strings must be non-empty"),
        ({"stop": ["a", 3]}, r"stop=\['a', 3\]: must be a str or a list of str"),
        ({"stop": 3}, r"stop=3: must be a str or a list of str"),
        ({"stop_token_ids": 2}, r"stop_token_ids=2: must be a list of int"),
        ({"stop_token_ids": "2"}, r"stop_token_ids='2': must be a list of int"),
        ({"stop_token_ids": [2, -1]}, r"stop_token_ids=-1: must be >= 0"),
        ({"stop_token_ids": [2.0]}, r"stop_token_ids=2.0: must be an int"),
        ({"ignore_eos": 1}, r"ignore_eos=1: must be a bool"),
        ({"include_stop_str_in_output": "yes"}, r"include_stop_str_in_output='yes': must be a bool"),
        ({"skip_special_tokens": None}, r"skip_special_tokens=None: must be a bool"),
        ({"logprobs": -1}, r"logprobs=-1: must be in \[0, 20\]"),
        ({"logprobs": 21}, r"logprobs=21: must be in \[0, 20\]"),
        ({"logprobs": 1.0}, r"logprobs=1.0: must be an int"),
        ({"prompt_logprobs": 21}, r"prompt_logprobs=21: must be in \[0, 20\]"),
        ({"min_p": 1.5}, r"min_p=1.5: must be in \[0, 1\]"),
        ({"min_p": "0.1"}, r"min_p='0.1': must be a float"),
        ({"presence_penalty": 2.5}, r"presence_penalty=2.5: must be in \[-2, 2\]"),
        ({"frequency_penalty": -3}, r"frequency_penalty=-3.0: must be in \[-2, 2\]"),
        ({"repetition_penalty": 0.0}, r"repetition_penalty=0.0: must be > 0"),
    ],
)
def test_invalid_fields_name_field_value_and_rule(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SamplingParams(**kwargs)
