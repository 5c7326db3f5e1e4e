"""Batch invariance beyond LLaVA (issue 37): Qwen2.5-VL (M-RoPE, the windowed vision tower), Qwen3-VL (q/k norms,
DeepStack) and Gemma 3 (sliding windows, each image's tokens attending both ways, SigLIP, GELU-tanh): the
engine's prompt logprobs with ``batch_invariant=True`` equal ``mmjax.score``'s bit for bit, batched and chunked."""

from __future__ import annotations

import numpy as np
import pytest

import mmjax
import tiny_gemma3
import tiny_qwen
from mmjax.training.score_checks import engine_target_logprobs, split_example


def prompts(chat, picture) -> list[tuple]:
    return [({"prompt": chat("What is it?", images=1), "multi_modal_data": {"image": picture(48, 80, seed=1)}},
             "A small red square on a blue field."),
            (chat("Count to five."), "One, two, three, four, five.")]


FAMILIES = {
    "qwen2_5_vl": lambda: (tiny_qwen.loaded(images=1), prompts(tiny_qwen.chat, tiny_qwen.picture),
                           dict(max_num_batched_tokens=32, page_size=16)),
    "qwen3_vl": lambda: (tiny_qwen.loaded(images=1, family="qwen3_vl"), prompts(tiny_qwen.chat, tiny_qwen.picture),
                         dict(max_num_batched_tokens=32, page_size=16)),
    # an image's 18 tokens must fit one step: 24-token chunks, windows of 8 keys (the checkpoint's)
    "gemma3": lambda: (mmjax.load(tiny_gemma3.checkpoint(), limit_mm_per_prompt={"image": 1}, max_model_len=256),
                       prompts(tiny_gemma3.chat, tiny_gemma3.picture), dict(max_num_batched_tokens=24, page_size=8)),
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_engine_prompt_logprobs_equal_score_bit_for_bit(family):
    llm, cases, chunking = FAMILIES[family]()
    pairs = [split_example(llm, prompt, target) for prompt, target in cases]
    wholes, examples = [w for w, _ in pairs], [e for _, e in pairs]
    alone = [mmjax.score(llm, [example], batch_size=1)[0] for example in examples]
    together = mmjax.score(llm, examples[::-1], batch_size=2)[::-1]
    base = dict(batch_invariant=True, max_num_seqs=2, num_pages=128, max_model_len=256)
    batched = engine_target_logprobs(llm, wholes, examples, mmjax.EngineConfig(**base))
    chunked = engine_target_logprobs(llm, wholes[::-1], examples[::-1], mmjax.EngineConfig(**base, **chunking))[::-1]
    for ours in (together, batched, chunked):
        for a, b in zip(ours, alone):
            assert a.shape == b.shape and np.array_equal(a.view(np.uint32), b.view(np.uint32))
    # the same function as the default engine's (its sliding windows, bidirectional images, M-RoPE), in
    # another order: equal to float32 rounding, not to the bit
    default = engine_target_logprobs(llm, wholes, examples, mmjax.EngineConfig(
        max_num_seqs=2, num_pages=128, max_model_len=256, **chunking))
    for a, b in zip(default, alone):
        np.testing.assert_allclose(a, b, atol=5e-5)
