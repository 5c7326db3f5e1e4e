"""The device runner: placeholder embeddings live in an on-device arena, steps carry only indices,
and the host hands arena rows out and takes them back."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import mmjax
from engine_fixtures import LLAVA, NEXT, hf_inputs, load, picture, torch_model
from mmjax.engine.embedding_rows import EmbeddingRows
from mmjax.engine.runner import model_text_config
from mmjax.engine.shapes import EMBEDDING_BLOCK_ROWS, StepShapes
from mmjax.kv_cache import OutOfPagesError
from mmjax.models.common.interface import EngineModel

CONFIG = mmjax.EngineConfig(page_size=8, max_num_seqs=3, max_num_batched_tokens=32, max_model_len=128)
PROMPT = {"prompt": "USER: <image>\nWhat is shown in this image? ASSISTANT:",
          "multi_modal_data": {"image": picture(40, 60, seed=3)}}


@pytest.fixture(scope="module")
def llm():
    return load(LLAVA)


def test_step_inputs_are_indices_and_the_arena_holds_transformers_image_features(llm, monkeypatch):
    """Every array a step sends is integer; the arena rows its slots name hold the image's features
    as transformers computes them (its vision tower and projector, on its own processing)."""
    import torch

    engine = llm.engine(CONFIG)
    runner, seen = engine.runner, []
    execute = runner.execute

    def recording(batch):
        seen.append((batch, np.asarray(runner.arena(0))))
        return execute(batch)

    monkeypatch.setattr(runner, "execute", recording)
    mmjax.generate(llm, PROMPT, mmjax.SamplingParams(max_tokens=2, temperature=0.0), engine_config=CONFIG)
    assert len(seen) > 2, "the prompt should be prefilled in several chunks, then decoded"
    for batch, _ in seen:
        arrays = [batch.input_ids, batch.logits_indices, batch.embedding_slots,
                  *(getattr(batch.metadata, f) for f in ("block_tables", "kv_lens", "slot_mapping", "positions"))]
        assert all(np.issubdtype(a.dtype, np.integer) for a in arrays)

    inputs = hf_inputs(LLAVA, llm, PROMPT)
    with torch.no_grad():
        features = torch_model(LLAVA).get_image_features(pixel_values=inputs["pixel_values"])
    features = getattr(features, "pooler_output", features)
    features = features[0] if isinstance(features, (list, tuple)) else features
    features = features.reshape(-1, features.shape[-1])
    image_token = llm.hf_config.image_token_id
    gathered = []
    for batch, arena in seen:
        tokens, slots = batch.input_ids[0], batch.embedding_slots[0]
        assert ((slots >= 0) == (tokens == image_token)).all(), "exactly the placeholders read the arena"
        gathered.append(arena[0, slots[slots >= 0]])
    gathered = np.concatenate(gathered)
    assert gathered.shape == tuple(features.shape)
    np.testing.assert_allclose(gathered, features.numpy(), rtol=1e-4, atol=1e-5)


def test_a_decode_step_is_as_wide_as_its_sequences(llm, monkeypatch):
    """Decode steps take the smallest decode bucket that holds their sequences (1, 2, then
    max_num_seqs 3 here), not max_num_seqs; prefill steps keep the token buckets."""
    config = dataclasses.replace(CONFIG, max_num_batched_tokens=64)
    assert config.decode_buckets == (1, 2, 3)
    engine = llm.engine(config)
    runner, widths = engine.runner, []
    execute = runner.execute

    def recording(batch):
        live = int(batch.metadata.num_seqs[0, 0])
        widths.append((batch.metadata.max_q_len == 1, live, batch.num_tokens))
        return execute(batch)

    monkeypatch.setattr(runner, "execute", recording)
    prompts = ["Hi", "A longer prompt than the first.", "Three"]
    params = [mmjax.SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True) for n in (2, 4, 6)]
    mmjax.generate(llm, prompts, params, engine_config=config)
    decode = [(live, width) for is_decode, live, width in widths if is_decode]
    assert {live for live, _ in decode} == {1, 2, 3}, "three, then two, then one sequence decoding"
    assert all(width == {1: 1, 2: 2, 3: 3}[live] for live, width in decode), decode
    assert all(width in config.token_buckets for is_decode, _, width in widths if not is_decode)


def test_decode_steps_multiply_their_rows_on_the_cpu_kernel(llm):
    """On one CPU device the default step program sends the decoder's few-row products (decode) to the
    native matmul kernel; impl="xla" (the plain-XLA path) keeps XLA's dot. Both are checked against
    transformers by the greedy tests, which run the default."""
    from mmjax.kernels_cpu.skinny_matmul import TARGET

    default = llm.engine(CONFIG).runner.lower_step(2, decode=True).as_text()
    plain = llm.engine(dataclasses.replace(CONFIG, impl="xla")).runner.lower_step(2, decode=True).as_text()
    layers = llm.hf_config.text_config.num_hidden_layers
    assert default.count(TARGET) >= 7 * layers  # q, k, v, o, gate, up, down of every layer
    assert TARGET not in plain


def test_rows_and_pages_all_come_back_after_generate_with_preemption():
    llm = load(NEXT)
    config = mmjax.EngineConfig(page_size=8, max_num_seqs=2, max_num_batched_tokens=64, max_model_len=256,
                                num_pages=40)
    prompts = [{"prompt": "USER: <image>\nDescribe. ASSISTANT:", "multi_modal_data": {"image": picture(30 + 9 * i, 50)}}
               for i in range(4)]
    outputs = mmjax.generate(llm, prompts, mmjax.SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True),
                             engine_config=config)
    engine = llm.engine(config)
    assert all(len(o.token_ids) == 24 for o in outputs)
    assert engine.stats["preemptions"] > 0, "the small cache should force a preemption"
    assert engine.embedding_rows.num_held == 0
    assert all(a.num_free_pages == a.num_pages - 1 for a in engine.allocators)


def claim(rows: EmbeddingRows, request: str, replica: int, num_rows: int, key: str | None = None):
    """``(rows, shared)`` of a request with one item."""
    return rows.assign(request, replica, [(key, num_rows)])[0]


def test_embedding_rows_never_overlap_and_come_back():
    shapes = StepShapes.build(CONFIG, max_model_len=128, num_replicas=2, max_mm_tokens_per_prompt=40)
    rows = EmbeddingRows(shapes)
    assert rows.rows_per_prompt == 48  # 40 rounded up to blocks of 16
    taken = {r: claim(rows, f"a{r}", r % 2, 40 - r)[0] for r in range(3)}
    for r in range(3):
        assert len(taken[r]) == 40 - r and (taken[r] >= EMBEDDING_BLOCK_ROWS).all()  # block 0 is reserved
    assert not set(taken[0]) & set(taken[2])  # both on replica 0
    assert rows.num_held == 3
    with pytest.raises(ValueError, match="already holds"):
        claim(rows, "a0", 0, 1)
    rows.release("a0")
    rows.release("a0")  # twice: nothing left to give back
    rows.release("never")
    again, shared = claim(rows, "b", 0, 40)
    assert set(again) == set(taken[0]) and not shared  # freed rows are handed out again
    claim(rows, "c", 0, 48)  # replica 0 now holds a2, b and c: 3 prompts (max_num_seqs) at the limit
    claim(rows, "c2", 0, 8 * 40)  # and the encoder cache's budget (8 prompts of 40)
    with pytest.raises(OutOfPagesError):
        claim(rows, "d", 0, 1)
    assert len(claim(rows, "d", 1, 48)[0]) == 48  # replica 1 has its own rows


def test_prompts_of_several_items_at_the_limit_fit_with_each_item_rounded_up_to_blocks():
    """Rows go per item, each rounded up to whole blocks: 3 items of 17 rows take 6 blocks, not the 4 that
    51 rows would; the arena still holds max_num_seqs such prompts beside the cache's budget."""
    config = dataclasses.replace(CONFIG, encoder_cache_tokens=0)
    shapes = StepShapes.build(config, max_model_len=128, num_replicas=1, max_mm_tokens_per_prompt=51,
                              max_mm_items_per_prompt=3)
    rows = EmbeddingRows(shapes)
    held = [rows.assign(f"p{i}", 0, [(None, 17)] * 3) for i in range(CONFIG.max_num_seqs)]
    every = np.concatenate([r for claims in held for r, _ in claims])
    assert len(every) == len(set(every.tolist())) == CONFIG.max_num_seqs * 51  # none shared, none overlapping
    with pytest.raises(OutOfPagesError):
        claim(rows, "one-more", 0, 1)


def test_the_encoder_cache_shares_each_item_on_its_own():
    """A follow-up prompt that adds one image to an earlier one's: only the new image gets rows to encode;
    the same image twice in one prompt is encoded once."""
    shapes = StepShapes.build(CONFIG, max_model_len=128, num_replicas=1, max_mm_tokens_per_prompt=48,
                              max_mm_items_per_prompt=3)
    rows = EmbeddingRows(shapes)
    first = rows.assign("a", 0, [("image-1", 16), ("image-2", 8)])
    assert [shared for _, shared in first] == [False, False]
    rows.filled("a", 0)
    rows.filled("a", 1)
    rows.release("a")
    follow_up = rows.assign("b", 0, [("image-1", 16), ("image-2", 8), ("image-3", 12)])
    assert [shared for _, shared in follow_up] == [True, True, False]
    assert [list(r) for r, _ in follow_up[:2]] == [list(r) for r, _ in first]
    twice = rows.assign("c", 0, [("image-4", 4), ("image-4", 4)])
    assert [shared for _, shared in twice] == [False, True] and list(twice[0][0]) == list(twice[1][0])
    assert rows.stats()["hits"] == 3 and rows.stats()["misses"] == 4


def test_models_implement_the_engine_interface_and_others_are_refused_by_name(llm):
    assert isinstance(llm.model, EngineModel)
    assert isinstance(load(NEXT).model, EngineModel)

    from flax import nnx

    class NotAModel(nnx.Module):
        def logits(self, hidden):
            return hidden

    graphdef, state = nnx.split(NotAModel())
    with pytest.raises(TypeError,
                       match=r"does not implement mmjax.models.common.interface.EngineModel: missing \['text_config'"):
        model_text_config(graphdef, state)


def test_the_encoder_cache_shares_filled_rows_and_evicts_idle_entries_first_in_first_out():
    shapes = StepShapes.build(dataclasses.replace(CONFIG, encoder_cache_tokens=32), max_model_len=128,
                              num_replicas=1, max_mm_tokens_per_prompt=16)
    rows = EmbeddingRows(shapes)  # room for 3 running prompts of 16 rows + 2 cached entries
    first, shared = claim(rows, "a", 0, 16, key="image-a")
    assert not shared
    rows.filled("a", 0)
    rows.release("a")  # idle, kept
    again, shared = claim(rows, "b", 0, 16, key="image-a")
    assert shared and list(again) == list(first)
    rows.release("b")
    unfilled, _ = claim(rows, "c", 0, 16, key="image-c")
    rows.release("c")  # never filled (its encoder call failed): dropped, not shared later
    assert not claim(rows, "d", 0, 16, key="image-c")[1]
    rows.filled("d", 0)
    rows.release("d")
    for name in ("e", "f", "g", "h"):  # four new prompts need the idle entries' rows: the oldest go first
        claim(rows, name, 0, 16, key=name)
    assert not claim(rows, "x", 0, 16, key="image-a")[1]  # evicted
    assert rows.stats()["hits"] == 1


def test_a_decode_step_computes_logits_for_its_rows_only(llm):
    """A step of T tokens holds at most T sequences: its program returns T rows of logits, not
    max_num_seqs (their greedy tokens padded to max_num_seqs), so the LM head, the greedy argmax and
    the copy out cost what its sequences cost; the sampler pads them to its one shape."""
    import jax
    import jax.numpy as jnp

    runner = llm.engine(CONFIG).runner
    vocab = llm.hf_config.text_config.vocab_size
    for tokens in (1, 2):
        logits, greedy, _ = runner.lower_step(tokens, decode=True).out_info
        assert logits.shape == (tokens, vocab)
        assert greedy.shape == (CONFIG.max_num_seqs,)
    rows = jnp.arange(2 * vocab, dtype=jnp.float32).reshape(2, vocab)
    padded = np.asarray(jax.device_get(runner.sampler_logits(rows)))
    assert padded.shape == (CONFIG.max_num_seqs, vocab)
    np.testing.assert_array_equal(padded[:2], np.asarray(rows))
    assert not padded[2:].any()
