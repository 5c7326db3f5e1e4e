"""Batch invariance (issue 37): ``mmjax.score`` and an engine with ``EngineConfig(batch_invariant=True)`` give a
token the same bits whatever else shares its batch or step, however its prompt is chunked and paged, and the
same bits as each other; the default engine does not (so these tests would see a different reduction order)."""

from __future__ import annotations

import functools

import jax
import numpy as np
import pytest

import mmjax
from engine_fixtures import load, picture
from mmjax.engine import count_compilations
from mmjax.training.score_checks import engine_target_logprobs, split_example
from mmjax.training import TrainExample, batch_loss, collate

PROMPT = "USER: <image>\nWhat is in the picture? ASSISTANT:"
CASES = [  # (prompt, target): images of three sizes, two images, text only, a long target
    ({"prompt": PROMPT, "multi_modal_data": {"image": picture(30, 40, seed=0)}}, " a red and blue square"),
    ({"prompt": PROMPT, "multi_modal_data": {"image": picture(90, 20, seed=1)}}, " nothing"),
    ({"prompt": "USER: <image>\nand <image>\nsame? ASSISTANT:",
      "multi_modal_data": {"image": [picture(16, 16, seed=2), picture(50, 60, seed=3)]}}, " no, the second is larger"),
    ("USER: say something long ASSISTANT:", " " + "one two three four five six seven eight nine ten " * 3),
]
INVARIANT = dict(batch_invariant=True, num_pages=256, max_model_len=256)


@functools.cache
def llm() -> mmjax.LLM:
    return load("tiny llava-1.5")


@functools.cache
def cases() -> tuple[list[dict], list[TrainExample]]:
    pairs = [split_example(llm(), prompt, target) for prompt, target in CASES]
    return [w for w, _ in pairs], [e for _, e in pairs]


@functools.cache
def scored_alone() -> list[np.ndarray]:
    return [mmjax.score(llm(), [example], batch_size=1)[0] for example in cases()[1]]


def bits_equal(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and bool(np.all(a.view(np.uint32) == b.view(np.uint32)))


def test_score_is_the_same_whichever_examples_are_scored_together():
    _, examples = cases()
    together = mmjax.score(llm(), examples, batch_size=4)
    reordered = mmjax.score(llm(), examples[::-1] + examples[:1], batch_size=3)
    for i, alone in enumerate(scored_alone()):
        assert alone.dtype == np.float32 and alone.shape == (len(examples[i].target),)
        assert bits_equal(together[i], alone) and bits_equal(reordered[len(examples) - 1 - i], alone)
    assert bits_equal(reordered[-1], scored_alone()[0])


def test_minus_the_mean_of_score_is_the_trainers_loss():
    for example, scores in zip(cases()[1], scored_alone()):
        loss = float(batch_loss(llm().graphdef, llm().state, collate(llm(), [example])))
        assert -float(np.mean(scores, dtype=np.float64)) == pytest.approx(loss, rel=2e-6)


def test_engine_prompt_logprobs_equal_score_bit_for_bit_in_any_batch_chunking_and_paging():
    wholes, examples = cases()
    configs = [
        mmjax.EngineConfig(max_num_seqs=4, max_num_batched_tokens=256, **INVARIANT),  # all at once
        mmjax.EngineConfig(max_num_seqs=2, max_num_batched_tokens=16, page_size=32, **INVARIANT),  # 16-token chunks
        mmjax.EngineConfig(max_num_seqs=4, max_num_batched_tokens=40, page_size=8, enable_prefix_caching=False,
                           **INVARIANT),
    ]
    for config in configs:
        batched = engine_target_logprobs(llm(), wholes, examples, config)
        reversed_ = engine_target_logprobs(llm(), wholes[::-1], examples[::-1], config)[::-1]
        for alone, a, b in zip(scored_alone(), batched, reversed_):
            assert bits_equal(a, alone) and bits_equal(b, alone)
    assert llm().engine().cache_stats()["encoder_cache"]["hits"] > 0  # the second pass read cached embeddings
    for whole, example, alone in zip(wholes, examples, scored_alone()):  # each alone
        assert bits_equal(engine_target_logprobs(llm(), [whole], [example], configs[0])[0], alone)


def test_the_default_engine_sums_in_another_order():
    """What the tests above would see if the engine's reductions ran in the default order: other bits."""
    wholes, examples = cases()
    default = engine_target_logprobs(llm(), wholes, examples, mmjax.EngineConfig(max_num_seqs=4, num_pages=256,
                                                                                 max_model_len=256))
    assert not all(bits_equal(a, b) for a, b in zip(default, scored_alone()))
    for a, b in zip(default, scored_alone()):
        np.testing.assert_allclose(a, b, atol=1e-4)


def sampled(prompts: list, config: mmjax.EngineConfig) -> list[mmjax.RequestOutput]:
    params = [mmjax.SamplingParams(temperature=1.0, top_p=0.9, seed=100 + i, max_tokens=12, logprobs=3,
                                   ignore_eos=True) for i in range(len(prompts))]
    return mmjax.generate(llm(), prompts, params, engine_config=config, use_tqdm=False)


def test_seeded_samples_logprobs_and_text_do_not_depend_on_the_batch():
    prompts = [prompt for prompt, _ in CASES]
    config = mmjax.EngineConfig(max_num_seqs=4, max_num_batched_tokens=64, **INVARIANT)
    together = sampled(prompts, config)
    # again, every prompt's full pages and images now cached: a hit reads the pages and rows written above
    before = llm().engine().cache_stats()
    again = sampled(prompts, config)
    after = llm().engine().cache_stats()
    assert after["prefix_cache"]["hits"] > before["prefix_cache"]["hits"]
    assert all(same_sample(a, b) for a, b in zip(together, again))
    small_steps = mmjax.EngineConfig(max_num_seqs=2, max_num_batched_tokens=16, page_size=32, **INVARIANT)
    for i, prompt in enumerate(prompts):
        params = mmjax.SamplingParams(temperature=1.0, top_p=0.9, seed=100 + i, max_tokens=12, logprobs=3,
                                      ignore_eos=True)
        alone = mmjax.generate(llm(), [prompt], params, engine_config=small_steps, use_tqdm=False)[0]
        assert same_sample(together[i], alone)


def same_sample(a: mmjax.RequestOutput, b: mmjax.RequestOutput) -> bool:
    ours, theirs = a.outputs[0], b.outputs[0]
    return (ours.token_ids == theirs.token_ids and ours.text == theirs.text
            and [{t: (p.logprob, p.rank) for t, p in d.items()} for d in ours.logprobs]
            == [{t: (p.logprob, p.rank) for t, p in d.items()} for d in theirs.logprobs])


def test_sampled_tokens_logprobs_equal_score_of_the_sampled_ids():
    """A rollout's logprobs are the trainer's: the sampled ids scored as a token-id target give the same bits."""
    prompts = [prompt for prompt, _ in CASES]
    outputs = sampled(prompts, mmjax.EngineConfig(max_num_seqs=4, max_num_batched_tokens=64, **INVARIANT))
    examples = [TrainExample(prompt, list(out.outputs[0].token_ids)) for prompt, out in zip(prompts, outputs)]
    for out, scores in zip(outputs, mmjax.score(llm(), examples)):
        engine = np.array([d[t].logprob for d, t in zip(out.outputs[0].logprobs, out.outputs[0].token_ids)],
                          np.float32)
        assert bits_equal(engine, scores)


def test_nothing_compiles_after_warmup_in_batch_invariant_mode():
    config = mmjax.EngineConfig(max_num_seqs=4, max_num_batched_tokens=64, page_size=16, **INVARIANT)
    engine = llm().engine(config)
    engine.warmup()
    with count_compilations() as compiled:
        sampled([prompt for prompt, _ in CASES], config)
        engine_target_logprobs(llm(), *cases(), config)
    assert compiled == [0]


def test_bad_batch_invariant_configs_are_refused_by_name():
    with pytest.raises(ValueError, match="batch_invariant must be True or False"):
        mmjax.EngineConfig(batch_invariant=1)
    with pytest.raises(ValueError, match="max_encoder_batch must be 1"):
        mmjax.EngineConfig(batch_invariant=True, max_encoder_batch=2)
    with pytest.raises(ValueError, match="impl must stay 'auto'"):
        mmjax.EngineConfig(batch_invariant=True, impl="xla")
    assert mmjax.EngineConfig(batch_invariant=True).max_encoder_batch == 1


def test_score_refuses_bad_arguments_before_any_work():
    with pytest.raises(TypeError, match="example 1 must be a TrainExample"):
        mmjax.score(llm(), [cases()[1][0], ("prompt", "target")])
    with pytest.raises(ValueError, match="batch_size must be an int >= 1"):
        mmjax.score(llm(), cases()[1], batch_size=0)
    with pytest.raises(ValueError, match="token-id targets must be"):
        mmjax.score(llm(), [TrainExample("USER: hi ASSISTANT:", [len(llm().tokenizer) + 5])])


def test_score_is_differentiable_through_the_invariant_kernels():
    """The trainer can take gradients of the same logprobs (a policy-gradient loss does)."""
    from mmjax.batch_invariant import batch_invariant_numerics
    from mmjax.training.loss import batch_token_logprobs

    batch = collate(llm(), [TrainExample("USER: hi ASSISTANT:", " hello there")], batch_size=1)

    def total(state):
        with batch_invariant_numerics():
            return batch_token_logprobs(llm().graphdef, state, batch).sum()

    grads = jax.grad(total)(llm().state)
    reference = jax.grad(lambda s: batch_token_logprobs(llm().graphdef, s, batch).sum())(llm().state)
    for ours, theirs in zip(jax.tree.leaves(grads), jax.tree.leaves(reference)):
        np.testing.assert_allclose(np.asarray(ours), np.asarray(theirs), rtol=2e-3, atol=2e-5)


@pytest.mark.parametrize("dtype, quantization", [("bfloat16", None), ("float32", "int8")])
def test_bfloat16_and_int8_engines_equal_score_bit_for_bit(dtype, quantization):
    model = load("tiny llava-1.5", dtype=dtype, quantization=quantization)
    pairs = [split_example(model, prompt, target) for prompt, target in CASES[::2]]
    wholes, examples = [w for w, _ in pairs], [e for _, e in pairs]
    config = mmjax.EngineConfig(max_num_seqs=2, max_num_batched_tokens=16, page_size=32, **INVARIANT)
    chunked = engine_target_logprobs(model, wholes, examples, config)
    for ours, example in zip(chunked, examples):
        assert bits_equal(ours, mmjax.score(model, [example], batch_size=1)[0])
