"""Greedy generation equals transformers' model token for token, through batching, chunking and preemption."""

from __future__ import annotations

import dataclasses

import pytest

import mmjax
from engine_fixtures import LLAVA, NEXT, TIED, hf_greedy, load, picture
from mmjax.kernels_cpu import transposed_matmul_unavailable
from mmjax.kernels_cpu.skinny_matmul import TRANSPOSED_TARGET

MAX_TOKENS = 6


def mixed_batch(kind: str) -> list[dict]:
    """Image sizes, image counts (0, 1, 2) and prompt lengths all differ."""
    return [
        {"prompt": "USER: <image>\nWhat is shown in this image? ASSISTANT:",
         "multi_modal_data": {"image": picture(40, 70, seed=1)}},
        {"prompt": "USER: Tell me about the quick brown fox. ASSISTANT:"},
        {"prompt": "USER: <image>\nCompare with <image>\nwhich one was taken at night? ASSISTANT:",
         "multi_modal_data": {"image": [picture(90, 30, seed=2), picture(33, 33, seed=3)]}},
        {"prompt": "USER: <image>\nHow many? ASSISTANT:", "multi_modal_data": {"image": picture(64, 100, seed=4)}},
    ]


# The caches cannot hold the four sequences at once (LLaVA-1.5: 16 pages x 8 tokens;
# LLaVA-NeXT, whose images take up to 135 tokens here: 47 pages), and a 32-token
# budget cuts every image prompt into chunks.
@pytest.mark.parametrize("kind, num_pages, max_model_len", [(LLAVA, 17, 128), (NEXT, 48, 320)])
def test_greedy_batch_equals_transformers_with_chunking_and_preemption(kind, num_pages, max_model_len):
    llm = load(kind)
    batch = mixed_batch(kind)
    config = mmjax.EngineConfig(page_size=8, num_pages=num_pages, max_num_seqs=4, max_num_batched_tokens=32,
                                max_model_len=max_model_len)  # impl "auto": the XLA path on CPU
    params = mmjax.SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True)
    outputs = mmjax.generate(llm, batch, params, engine_config=config, use_tqdm=False)
    engine = llm.engine(config)
    assert max(len(r.prompt_token_ids) for r in outputs) > 32  # chunked prefill happened
    for prompt, output in zip(batch, outputs):
        assert output.finish_reason == "length"
        assert list(output.token_ids) == hf_greedy(kind, llm, prompt, MAX_TOKENS), prompt["prompt"]
    assert engine.stats["preemptions"] > 0, "the small cache should have forced a preemption"
    assert all(a.num_free_pages == a.num_pages - 1 for a in engine.allocators)  # every page returned


@pytest.mark.skipif(transposed_matmul_unavailable("float32") is not None, reason="the CPU matmul kernel cannot run")
def test_tied_lm_head_on_the_cpu_kernel_gives_the_tokens_of_the_plain_path():
    """A model with tied embeddings computes its LM head as hidden @ E.T: its decode steps send that product
    to the transposed-weight CPU kernel (once per step program), and greedy generation is token for token
    that of impl="xla" (XLA's dot everywhere) and transformers'."""
    llm = load(TIED)
    assert llm.hf_config.text_config.tie_word_embeddings
    config = mmjax.EngineConfig(page_size=8, num_pages=40, max_num_seqs=4, max_num_batched_tokens=32,
                                max_model_len=128)
    plain_config = dataclasses.replace(config, impl="xla")
    for rows in (2, 4):  # decode steps of 2 and 4 sequences: the head multiplies that many rows
        assert llm.engine(config).runner.lower_step(rows, decode=True).as_text().count(TRANSPOSED_TARGET) == 1
        assert TRANSPOSED_TARGET not in llm.engine(plain_config).runner.lower_step(rows, decode=True).as_text()
    batch = mixed_batch(TIED)
    params = mmjax.SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True)
    kernel = [list(o.token_ids) for o in mmjax.generate(llm, batch, params, engine_config=config, use_tqdm=False)]
    plain = [list(o.token_ids) for o in mmjax.generate(llm, batch, params, engine_config=plain_config,
                                                       use_tqdm=False)]
    assert kernel == plain
    assert kernel == [hf_greedy(TIED, llm, prompt, MAX_TOKENS) for prompt in batch]
