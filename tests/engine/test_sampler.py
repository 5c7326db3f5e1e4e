"""The sampler: greedy, temperature, top-k, top-p, seeds per row, raw logprobs, one compile."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmjax.engine.sampler import SamplingTensors, SeenTokens, first_argmax, prompt_logprobs, sample
from mmjax.engine.sampling_params import SamplingParams

V = 37  # vocabulary: prime, distinct from every batch size below
GREEDY = SamplingParams.greedy()


def random_logits(rows: int, seed: int = 0, vocab: int = V, scale: float = 3.0) -> np.ndarray:
    return (np.random.default_rng(seed).normal(size=(rows, vocab)) * scale).astype(np.float32)


def log_softmax64(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def draw(logits: np.ndarray, params: list[SamplingParams], seeds=None, steps=None, pad_to=None, num_logprobs=0):
    n = len(params)
    seeds = list(range(n)) if seeds is None else seeds
    steps = [0] * n if steps is None else steps
    tensors = SamplingTensors.build(params, seeds, steps, pad_to=pad_to or n)
    return sample(logits, tensors, num_logprobs=num_logprobs)


def nucleus(logits: np.ndarray, temperature: float, top_p: float) -> set[int]:
    """The smallest set of most likely tokens holding >= top_p, by an independent float64 route."""
    probs = np.exp(log_softmax64(logits / temperature))
    order = np.argsort(-probs, kind="stable")
    size = int(np.searchsorted(np.cumsum(probs[order]), top_p)) + 1
    return set(order[:size].tolist())


def test_greedy_rows_take_argmax_and_padding_rows_are_greedy():
    logits = random_logits(7, seed=1)
    params = [GREEDY, SamplingParams.greedy(top_k=3, top_p=0.2), SamplingParams(temperature=1e-7)] * 2
    out = draw(logits, params, pad_to=7)
    np.testing.assert_array_equal(out.tokens, logits.argmax(-1))
    assert out.tokens.dtype == np.int32 and out.tokens.shape == (7,)


def test_first_argmax_is_numpys_argmax_on_ties_infinities_and_nan():
    rng = np.random.default_rng(3)
    rows = [
        rng.integers(0, 3, size=V).astype(np.float32),  # many ties: the first maximum wins
        np.full(V, -np.inf, np.float32),  # a fully masked row: index 0
        np.where(np.arange(V) % 5 == 0, np.inf, 0.0).astype(np.float32),  # several +inf
        np.where(np.arange(V) == 11, np.nan, rng.normal(size=V)).astype(np.float32),  # NaN counts as the max
        np.where(np.isin(np.arange(V), [4, 20]), np.nan, np.inf).astype(np.float32),  # the first NaN
        random_logits(1, seed=9)[0],
    ]
    logits = np.stack(rows)
    np.testing.assert_array_equal(np.asarray(first_argmax(logits)), np.argmax(logits, axis=-1))


def test_logprobs_are_raw_log_softmax_whatever_the_temperature():
    logits = random_logits(11, seed=2)
    params = [SamplingParams(temperature=t, top_k=k) for t, k in zip([0.0, 0.3, 1.0, 2.5] * 3, [-1, 5, 0] * 4)][:11]
    out = draw(logits, params, num_logprobs=20)
    ref = torch.log_softmax(torch.from_numpy(logits), dim=-1).numpy()
    rows = np.arange(11)
    np.testing.assert_allclose(out.logprobs, ref[rows, np.asarray(out.tokens)], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out.logprobs, log_softmax64(logits)[rows, np.asarray(out.tokens)], atol=1e-5)
    want_ids = np.argsort(-ref, axis=-1, kind="stable")[:, :20]
    np.testing.assert_array_equal(out.top_ids, want_ids)
    np.testing.assert_allclose(out.top_logprobs, np.take_along_axis(ref, want_ids, -1), atol=1e-5)
    want_ranks = 1 + (ref > ref[rows, np.asarray(out.tokens)][:, None]).sum(-1)
    np.testing.assert_array_equal(out.ranks, want_ranks)
    assert draw(logits, params, num_logprobs=0).top_ids.shape == (11, 0)
    without = draw(logits, params, num_logprobs=None)  # none asked: the same tokens, no log-softmax
    np.testing.assert_array_equal(without.tokens, out.tokens)
    assert not np.any(without.logprobs) and without.top_ids.shape == (11, 0)


def test_top_k_never_samples_outside_the_top_k():
    logits = np.repeat(random_logits(1, seed=3, scale=1.0), 256, axis=0)  # flat-ish: all tokens likely
    out = draw(logits, [SamplingParams(temperature=1.5, top_k=4)] * 256)
    top4 = set(np.argsort(-logits[0])[:4].tolist())
    assert set(np.asarray(out.tokens).tolist()) == top4  # stays inside, and reaches all of them
    k1 = draw(logits, [SamplingParams(temperature=1.5, top_k=1)] * 256)
    np.testing.assert_array_equal(k1.tokens, logits.argmax(-1))


@pytest.mark.parametrize("top_p, top_k", [(0.6, -1), (0.9, -1), (0.8, 6)])
def test_top_p_never_samples_outside_the_nucleus(top_p, top_k):
    row = random_logits(1, seed=4, scale=1.5)[0]
    logits = np.repeat(row[None], 256, axis=0)
    out = draw(logits, [SamplingParams(temperature=0.8, top_p=top_p, top_k=top_k)] * 256)
    if top_k > 0:  # top-p applies to the top-k renormalised distribution
        kept = np.argsort(-row)[:top_k]
        allowed = {int(kept[i]) for i in nucleus(row[kept], 0.8, top_p)}
    else:
        allowed = nucleus(row, 0.8, top_p)
    drawn = set(np.asarray(out.tokens).tolist())
    assert drawn <= allowed and len(drawn) > 1
    tiny = draw(logits, [SamplingParams(temperature=5.0, top_p=1e-6)] * 256)
    np.testing.assert_array_equal(tiny.tokens, logits.argmax(-1))


def test_empirical_distribution_matches_softmax_at_temperature():
    logits = np.array([1.0, 0.2, -0.5, 0.7, -1.3], np.float32)
    draws = 4000
    batch = np.repeat(logits[None], draws, axis=0)
    expected = np.exp(log_softmax64(logits[None] / 0.7))[0]
    # Half the draws vary the seed, half the step of one seed: both must be fair.
    seeds = list(range(draws // 2)) + [12345] * (draws // 2)
    steps = [0] * (draws // 2) + list(range(draws // 2))
    out = draw(batch, [SamplingParams(temperature=0.7)] * draws, seeds=seeds, steps=steps)
    freq = np.bincount(np.asarray(out.tokens), minlength=5) / draws
    assert np.abs(freq - expected).max() < 0.03, (freq, expected)
    # top-k=3: the same draws renormalised over the 3 most likely tokens.
    out = draw(batch, [SamplingParams(temperature=0.7, top_k=3)] * draws, seeds=seeds, steps=steps)
    freq = np.bincount(np.asarray(out.tokens), minlength=5) / draws
    truncated = np.where(np.isin(np.arange(5), [0, 3, 1]), expected, 0.0)
    assert np.abs(freq - truncated / truncated.sum()).max() < 0.03, freq


def test_a_row_depends_only_on_its_seed_and_step():
    target = random_logits(1, seed=5, scale=0.5)  # flat: a wrong key would show
    params = SamplingParams(temperature=1.0, top_k=20, top_p=0.95)
    alone = [int(draw(target, [params], seeds=[77], steps=[s]).tokens[0]) for s in range(8)]
    others = [GREEDY, SamplingParams(temperature=0.3), SamplingParams(top_k=2), SamplingParams(top_p=0.5)]
    for step in range(8):
        logits = random_logits(8, seed=10 + step)
        logits[5] = target[0]
        rows = [others[(i + step) % 4] for i in range(5)] + [params, others[0]]
        out = draw(logits, rows, seeds=[1, 2, 3, 4, 5, 77, 6], steps=[9, 9, 9, 9, 9, step, 9], pad_to=8)
        assert int(out.tokens[5]) == alone[step]
    assert len(set(alone)) > 3  # different steps, different draws


def test_mixed_batch_compiles_once_for_any_parameter_values():
    logits = random_logits(13, seed=6, vocab=29)  # a shape no other test uses
    before = sample._cache_size()
    for temperature, top_k, top_p, seed in [(0.5, 3, 0.9, 1), (1.7, -1, 1.0, 2), (0.0, 0, 0.3, 3)]:
        params = [GREEDY, SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p)] * 5
        draw(logits, params, seeds=[seed] * 10, steps=list(range(10)), pad_to=13)
    draw(logits, [GREEDY] * 13)  # all greedy: same program
    assert sample._cache_size() == before + 1


def test_build_pads_with_greedy_rows_and_wraps_seeds():
    t = SamplingTensors.build([SamplingParams(temperature=0.8, top_k=-1, top_p=0.5)], [-1], [4], pad_to=3)
    np.testing.assert_allclose(t.temperature, [0.8, 0, 0])
    np.testing.assert_array_equal(t.top_k, [0, 0, 0])
    np.testing.assert_allclose(t.top_p, [0.5, 1, 1])
    np.testing.assert_array_equal(t.seeds, [2**32 - 1, 0, 0])
    np.testing.assert_array_equal(t.steps, [4, 0, 0])
    assert t.seeds.dtype == np.uint32 and t.top_k.dtype == np.int32 and t.temperature.dtype == np.float32
    with pytest.raises(ValueError, match="1 params, 2 seeds and 1 steps"):
        SamplingTensors.build([GREEDY], [1, 2], [0], pad_to=4)
    with pytest.raises(ValueError, match="2 rows do not fit pad_to=1"):
        SamplingTensors.build([GREEDY] * 2, [1, 2], [0, 0], pad_to=1)


def test_prompt_logprobs_and_ranks_match_torch():
    logits = random_logits(17, seed=7)
    next_tokens = np.random.default_rng(8).integers(0, V, 17).astype(np.int32)
    token_lp, ranks, top_ids, top_lp = prompt_logprobs(logits, next_tokens, num_logprobs=5)
    ref = torch.log_softmax(torch.from_numpy(logits), dim=-1)
    want = ref.gather(-1, torch.from_numpy(next_tokens).long()[:, None])[:, 0].numpy()
    np.testing.assert_allclose(token_lp, want, atol=1e-5)
    ref_top = ref.topk(5, dim=-1)
    np.testing.assert_array_equal(top_ids, ref_top.indices.numpy())
    np.testing.assert_allclose(top_lp, ref_top.values.numpy(), atol=1e-5)
    np.testing.assert_array_equal(ranks, 1 + (ref.numpy() > want[:, None]).sum(-1))
    assert prompt_logprobs(logits, next_tokens, num_logprobs=0)[2].shape == (17, 0)


def test_penalties_follow_vllm_and_transformers_and_logprobs_stay_raw():
    from transformers import RepetitionPenaltyLogitsProcessor

    logits = random_logits(4, seed=11)
    outputs = [[3, 3, 5], [], [7, 8, 7, 7], [1]]
    prompts = [[2, 3, 9], [4, 4], [10], []]
    params = [SamplingParams.greedy(repetition_penalty=1.7), SamplingParams.greedy(repetition_penalty=0.6),
              SamplingParams.greedy(frequency_penalty=1.5, presence_penalty=0.5),
              SamplingParams.greedy(presence_penalty=-2.0)]
    seen = SeenTokens.build(outputs, prompts, [0, 1, 2, 3], V, pad_to=4)
    tensors = SamplingTensors.build(params, [0] * 4, [len(o) for o in outputs], pad_to=4)
    out = sample(logits, tensors, seen)
    want = logits.copy()
    for i, p in enumerate(params):  # repetition: transformers' processor over prompt + output ids
        ids = torch.tensor([prompts[i] + outputs[i]], dtype=torch.long)
        if p.repetition_penalty != 1:
            want[i] = RepetitionPenaltyLogitsProcessor(p.repetition_penalty)(ids, torch.from_numpy(want[i:i + 1]))[0]
        counts = np.bincount(outputs[i], minlength=V)  # OpenAI's frequency and presence penalties
        want[i] -= p.frequency_penalty * counts + p.presence_penalty * (counts > 0)
    np.testing.assert_array_equal(out.tokens, want.argmax(-1))
    assert (np.asarray(out.tokens) != logits.argmax(-1)).any()  # the penalties changed some choice
    rows = np.arange(4)
    np.testing.assert_allclose(out.logprobs, log_softmax64(logits)[rows, np.asarray(out.tokens)], atol=1e-5)


def test_a_batch_without_penalties_is_the_same_with_zero_seen_tokens():
    logits = random_logits(5, seed=12)
    params = [SamplingParams(temperature=0.8, top_p=0.9), GREEDY] * 2 + [SamplingParams(temperature=1.3)]
    tensors = SamplingTensors.build(params, list(range(5)), [2] * 5, pad_to=5)
    seen = SeenTokens.build([[1, 2]] * 5, [[3]] * 5, list(range(5)), V, pad_to=5)  # penalties all off
    np.testing.assert_array_equal(sample(logits, tensors).tokens, sample(logits, tensors, seen).tokens)


def test_min_p_keeps_only_tokens_near_the_most_likely():
    logits = random_logits(1, seed=13, scale=1.5)
    probs = np.exp(log_softmax64(logits[0] / 0.9))
    allowed = set(np.nonzero(probs >= 0.2 * probs.max())[0].tolist())
    params = [SamplingParams(temperature=0.9, min_p=0.2)] * 64
    out = draw(np.repeat(logits, 64, axis=0), params, seeds=list(range(64)))
    drawn = set(np.asarray(out.tokens).tolist())
    assert drawn <= allowed and len(drawn) >= 2, (drawn, allowed)
    assert len(allowed) < V // 2  # the filter did remove most tokens
