"""generate(): logprobs, prompt logprobs, seeded sampling, streaming, stops, bad input, compile-once."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import mmjax
from engine_fixtures import LLAVA, hf_inputs, load, picture, torch_model
from mmjax.engine import count_compilations

CONFIG = mmjax.EngineConfig(page_size=8, max_num_seqs=4, max_num_batched_tokens=64, max_model_len=128)
IMAGE_PROMPT = {"prompt": "USER: <image>\nWhat is shown in this image? ASSISTANT:",
                "multi_modal_data": {"image": picture(50, 80, seed=7)}}


@pytest.fixture(scope="module")
def llm():
    return load(LLAVA)


def torch_log_softmax(llm, prompt: dict, generated: list[int]) -> np.ndarray:
    """transformers' log-softmax over the prompt + generated tokens: [L + n, V]."""
    import torch

    inputs = hf_inputs(LLAVA, llm, prompt)
    ids = torch.cat([inputs.pop("input_ids"), torch.tensor([generated], dtype=torch.long)], dim=1)
    inputs.pop("attention_mask", None)
    with torch.no_grad():
        logits = torch_model(LLAVA)(input_ids=ids, **inputs).logits[0]
    return torch.log_softmax(logits.double(), dim=-1).numpy()


def test_logprobs_and_prompt_logprobs_equal_transformers(llm):
    params = mmjax.SamplingParams(temperature=0.0, max_tokens=4, logprobs=3, prompt_logprobs=2, ignore_eos=True)
    [out] = mmjax.generate(llm, IMAGE_PROMPT, params, engine_config=CONFIG)
    reference = torch_log_softmax(llm, IMAGE_PROMPT, list(out.token_ids))
    prompt_len = len(out.prompt_token_ids)
    assert out.prompt_logprobs[0] is None and len(out.prompt_logprobs) == prompt_len
    for position in range(1, prompt_len):
        token = out.prompt_token_ids[position]
        entry = out.prompt_logprobs[position]
        assert abs(entry[token].logprob - reference[position - 1, token]) < 1e-4
        assert entry[token].rank == 1 + int((reference[position - 1] > reference[position - 1, token]).sum())
        assert len(entry) <= 3  # the token plus the top 2
    for i, (token, entry) in enumerate(zip(out.token_ids, out.logprobs)):
        row = reference[prompt_len - 1 + i]
        assert abs(entry[token].logprob - row[token]) < 1e-4
        top = [t for t, lp in sorted(entry.items(), key=lambda kv: kv[1].rank or 0) if lp.rank]
        np.testing.assert_array_equal(top, np.argsort(-row)[:3])
        assert entry[token].rank == 1  # greedy picks the top token
    assert abs(out.outputs[0].cumulative_logprob - sum(reference[prompt_len - 1 + i, t]
                                                        for i, t in enumerate(out.token_ids))) < 1e-3
    [plain] = mmjax.generate(llm, IMAGE_PROMPT, dataclasses.replace(params, logprobs=None, prompt_logprobs=None),
                             engine_config=CONFIG)
    assert plain.token_ids == out.token_ids  # as vLLM: without logprobs asked, none are computed or summed
    assert plain.outputs[0].logprobs is None and plain.outputs[0].cumulative_logprob is None


def test_penalties_steer_greedy_decoding_as_the_formula_says(llm):
    """Greedy with penalties = argmax of the dense model's logits, penalised by hand, step by step."""
    from transformers import RepetitionPenaltyLogitsProcessor
    import torch

    params = mmjax.SamplingParams(temperature=0.0, max_tokens=10, ignore_eos=True, repetition_penalty=1.3,
                                  frequency_penalty=0.7, presence_penalty=0.4)
    [out] = mmjax.generate(llm, "USER: say something twice. ASSISTANT:", params, engine_config=CONFIG)
    prompt = list(out.prompt_token_ids)
    generated: list[int] = []
    for _ in range(10):
        _, logits = llm.logits({"prompt_token_ids": prompt + generated})
        row = torch.from_numpy(logits[-1:].astype(np.float32))
        row = RepetitionPenaltyLogitsProcessor(1.3)(torch.tensor([prompt + generated]), row)[0].numpy()
        counts = np.bincount(generated, minlength=row.shape[0])
        row = row - 0.7 * counts - 0.4 * (counts > 0)
        generated.append(int(row.argmax()))
    assert list(out.token_ids) == generated
    plain = mmjax.generate(llm, "USER: say something twice. ASSISTANT:",
                           mmjax.SamplingParams(temperature=0.0, max_tokens=10, ignore_eos=True), engine_config=CONFIG)
    assert list(plain[0].token_ids) != generated  # without them the model repeats a prompt token (81) at step 7


def test_seeded_sampling_is_independent_of_batch_composition(llm):
    sampled = mmjax.SamplingParams(temperature=1.3, top_k=50, top_p=0.9, seed=1234, max_tokens=8, ignore_eos=True)
    [alone] = mmjax.generate(llm, IMAGE_PROMPT, sampled, engine_config=CONFIG)
    batch = ["Hello", IMAGE_PROMPT, {"prompt": "USER: Describe the sea. ASSISTANT:"}]
    params = [mmjax.SamplingParams(temperature=0.0, max_tokens=3), sampled,
              mmjax.SamplingParams(temperature=0.8, seed=5, max_tokens=11)]
    together = mmjax.generate(llm, batch, params, engine_config=CONFIG, use_tqdm=False)
    assert together[1].token_ids == alone.token_ids
    other_seed = mmjax.generate(llm, IMAGE_PROMPT, mmjax.SamplingParams(
        temperature=1.3, top_k=50, top_p=0.9, seed=99, max_tokens=8, ignore_eos=True), engine_config=CONFIG)
    assert other_seed[0].token_ids != alone.token_ids


def test_streaming_yields_growing_outputs_that_end_as_the_batch_result(llm):
    params = mmjax.SamplingParams(temperature=0.0, max_tokens=5, ignore_eos=True)
    final = {}
    counts = {}
    for output in mmjax.generate(llm, [IMAGE_PROMPT, "Hi"], params, engine_config=CONFIG, stream=True):
        assert len(output.token_ids) >= counts.get(output.request_id, 0)
        counts[output.request_id] = len(output.token_ids)
        final[output.request_id] = output
    batch = mmjax.generate(llm, [IMAGE_PROMPT, "Hi"], params, engine_config=CONFIG, use_tqdm=False)
    assert sorted(o.token_ids for o in final.values()) == sorted(o.token_ids for o in batch)
    assert all(o.finished and o.finish_reason == "length" for o in final.values())


def test_stop_token_and_stop_string(llm):
    greedy = mmjax.SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
    [free] = mmjax.generate(llm, IMAGE_PROMPT, greedy, engine_config=CONFIG)
    stop_id = free.token_ids[2]
    [stopped] = mmjax.generate(llm, IMAGE_PROMPT, mmjax.SamplingParams(
        temperature=0.0, max_tokens=8, ignore_eos=True, stop_token_ids=[stop_id]), engine_config=CONFIG)
    first = free.token_ids.index(stop_id)
    assert stopped.finish_reason == "stop" and stopped.outputs[0].stop_reason == stop_id
    assert stopped.token_ids == free.token_ids[: first + 1]
    text = free.text
    if len(text) > 3:
        stop = text[1:3]
        [cut] = mmjax.generate(llm, IMAGE_PROMPT, mmjax.SamplingParams(
            temperature=0.0, max_tokens=8, ignore_eos=True, stop=[stop]), engine_config=CONFIG)
        assert cut.finish_reason == "stop" and cut.text == text[: text.index(stop)]


def test_a_bad_prompt_is_refused_before_work_and_others_still_run(llm):
    engine = llm.engine(CONFIG)
    free_before = sum(a.num_free_pages for a in engine.allocators)
    good = {"prompt": "USER: <image>\nHi", "multi_modal_data": {"image": picture(20, 20)}}
    bad = {"prompt": "USER: <image><image>\nHi", "multi_modal_data": {"image": picture(20, 20)}}
    with pytest.raises(mmjax.PromptError, match=r"prompt 1: ValueError: .*2 image placeholder token"):
        mmjax.generate(llm, [good, bad], engine_config=CONFIG)
    assert not engine.has_unfinished_requests() and sum(a.num_free_pages for a in engine.allocators) == free_before
    [ok] = mmjax.generate(llm, good, mmjax.SamplingParams(temperature=0.0, max_tokens=3), engine_config=CONFIG)
    assert len(ok.token_ids) >= 1


@pytest.mark.parametrize("kwargs, message", [
    (dict(temperature=-1.0), "temperature"), (dict(top_p=0.0), "top_p"), (dict(top_p=1.5), "top_p"),
    (dict(max_tokens=0), "max_tokens"),
])
def test_invalid_sampling_parameters(kwargs, message):
    with pytest.raises(ValueError, match=message):
        mmjax.SamplingParams(**kwargs)


def test_prompt_longer_than_the_context_is_refused(llm):
    with pytest.raises(mmjax.PromptError, match="max_model_len is 128"):
        mmjax.generate(llm, "word " * 200, engine_config=CONFIG)


def test_no_compilation_after_warmup(llm):
    config = mmjax.EngineConfig(page_size=8, max_num_seqs=4, max_num_batched_tokens=64, max_model_len=160)
    engine = llm.engine(config)
    assert engine.warmup() > 0
    workload = [
        IMAGE_PROMPT,
        {"prompt": "USER: <image>\nand <image>\nsame? ASSISTANT:",
         "multi_modal_data": {"image": [picture(300, 90, seed=1), picture(16, 16, seed=2)]}},
        "A short text prompt.",
        {"prompt": "USER: " + "tell me a long story " * 6 + "ASSISTANT:"},
        {"prompt": "<image>", "multi_modal_data": {"image": picture(77, 31, seed=3)}},
        "Answer in JSON.",
        "Pick one.",
    ]
    schema = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 9}}, "required": ["n"]}
    params = [mmjax.SamplingParams(temperature=0.0, max_tokens=7),
              mmjax.SamplingParams(temperature=0.9, top_p=0.8, seed=3, max_tokens=5, logprobs=2),
              mmjax.SamplingParams(temperature=0.5, top_k=5, max_tokens=9, prompt_logprobs=1),
              mmjax.SamplingParams(temperature=0.0, max_tokens=4, repetition_penalty=1.2, presence_penalty=0.5),
              mmjax.SamplingParams(temperature=1.0, max_tokens=6, min_p=0.1),
              # structured outputs ride in the same sampler program: masks are an array of fixed shape
              mmjax.SamplingParams(temperature=0.0, max_tokens=8, structured_outputs={"json": schema}),
              mmjax.SamplingParams(temperature=0.7, seed=5, max_tokens=8, logprobs=1,
                                   structured_outputs={"choice": ["yes", "no"]})]
    with count_compilations() as compiled:
        outputs = mmjax.generate(llm, workload, params, engine_config=config, use_tqdm=False)
    assert all(o.finished for o in outputs)
    assert compiled[0] == 0, f"{compiled[0]} programs compiled after warm-up"


def test_errors_return_keeps_the_good_prompts_running(llm):
    good = {"prompt": "USER: <image>\nHi", "multi_modal_data": {"image": picture(20, 20)}}
    batch = [good, {"prompt": "<image>", "multi_modal_data": {"image": "not an image"}}, "Plain text", 42]
    outputs = mmjax.generate(llm, batch, mmjax.SamplingParams(temperature=0.0, max_tokens=3),
                             engine_config=CONFIG, errors="return", use_tqdm=False)
    assert [o.finish_reason for o in outputs] == ["length", "error", "length", "error"]
    assert "prompt 1: TypeError: invalid image data of type str" in outputs[1].error
    assert "prompt 3: TypeError: a prompt must be a str" in outputs[3].error
    assert len(outputs[0].token_ids) == len(outputs[2].token_ids) == 3 and outputs[0].error is None


def test_stats_count_prefill_and_decode_steps(llm):
    """One short text prompt: one prefill step (it gives the first token), then one decode step per
    further token; the counts add up to the steps, and the token counts to the prompt and outputs."""
    engine = llm.engine(CONFIG)
    before = {k: engine.stats[k] for k in ("steps", "prefill_steps", "decode_steps", "prefill_tokens",
                                             "decode_tokens")}
    params = mmjax.SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)
    [out] = mmjax.generate(llm, ["Hi there"], params, engine_config=CONFIG, use_tqdm=False)
    delta = {k: engine.stats[k] - v for k, v in before.items()}
    assert delta["prefill_steps"] == 1 and delta["decode_steps"] == 5
    assert delta["steps"] == delta["prefill_steps"] + delta["decode_steps"]
    assert delta["prefill_tokens"] == len(out.prompt_token_ids) and delta["decode_tokens"] == 5


def test_plain_greedy_steps_take_the_steps_own_tokens_and_others_the_sampler(llm, monkeypatch):
    """All-greedy steps without penalties or logprobs read the greedy tokens the step program computed
    (no sampler call); a request asking for logprobs goes through the sampler, with the same tokens."""
    engine = llm.engine(CONFIG)
    calls, sample = [], engine.runner.sample
    monkeypatch.setattr(engine.runner, "sample", lambda *args: calls.append(args) or sample(*args))
    greedy = mmjax.SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True)
    [plain] = mmjax.generate(llm, IMAGE_PROMPT, greedy, engine_config=CONFIG)
    assert calls == [], "no sampler call for plain greedy requests"
    [logged] = mmjax.generate(llm, IMAGE_PROMPT, dataclasses.replace(greedy, logprobs=1), engine_config=CONFIG)
    assert len(calls) == 4 and logged.token_ids == plain.token_ids
    assert all(entry[token].rank == 1 for token, entry in zip(logged.token_ids, logged.outputs[0].logprobs))
