"""Prefill, chunked prefill and decode through the paged KV cache equal a dense full forward.

Two sequences share every step (one with an image, one text-only), mixing a
prefill chunk with decode tokens in one ragged batch. Unwritten cache slots hold
NaN, so reading a slot the step should not see poisons the logits.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mmjax.engine import encode_multimodal, paged_step
from mmjax.kv_cache import KVPages, PageAllocator, build_attention_metadata
from tiny_llava import loaded, our_logits, relative_error

PAGE_SIZE, NUM_PAGES = 4, 48
ARENA_OFFSET = 7


def nan_pages(text_cfg) -> tuple[KVPages, ...]:
    shape = (text_cfg.num_kv_heads, NUM_PAGES, PAGE_SIZE, text_cfg.head_dim)
    return tuple(KVPages(jnp.full(shape, jnp.nan), jnp.full(shape, jnp.nan)) for _ in range(text_cfg.num_layers))


def sequences(image_token: int, tokens_per_image: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    text = lambda n: list(rng.integers(4, image_token, n))  # noqa: E731
    a = text(5) + [image_token] * tokens_per_image + text(6) + text(3)  # prompt, then 3 decoded tokens
    b = text(13) + text(4)  # prompt, then 4 decoded tokens
    pixels = rng.standard_normal((1, 3, 30, 30)).astype(np.float32)
    return np.array(a, np.int32), np.array(b, np.int32), pixels


# Each step: (A's token range, B's token range); a range of length 1 after the prompt is a decode.
def schedule(len_a_prompt: int):
    split = 12  # A's prompt in two chunks, cutting through the image (placeholders 5..29)
    a_steps = [(0, split), (split, len_a_prompt)] + [(len_a_prompt + i, len_a_prompt + i + 1) for i in range(3)]
    b_steps = [(0, 13)] + [(13 + i, 14 + i) for i in range(4)]
    return list(zip(a_steps, b_steps))


@pytest.mark.parametrize("name, impl", [("gqa_default", "reference"), ("mha_full_sharded_tied", "xla"),
                                        ("gqa_default", "pallas"), ("mistral_sliding_window", "cpu"),
                                        ("mistral_sliding_window", "xla")])
def test_paged_steps_equal_dense_forward(name, impl):
    model, hf_config = loaded(name)
    per_image = model.config.image_tokens_per_image
    a, b, pixels = sequences(hf_config.image_token_id, per_image)
    dense_a = our_logits(model, a[None], pixels)[0]
    dense_b = our_logits(model, b[None], None)[0]

    graphdef, state = nnx.split(model)
    features = np.asarray(encode_multimodal(graphdef, state, {"pixel_values": jnp.asarray(pixels)}))
    is_image = a == hf_config.image_token_id
    feature_row = np.where(is_image, np.cumsum(is_image) - 1, -1)
    # The embedding arena holds A's image embeddings from row ARENA_OFFSET on (other rows: NaN, never read).
    arena = np.full((1, ARENA_OFFSET + len(features) + 5, features.shape[1]), np.nan, np.float32)
    arena[0, ARENA_OFFSET:ARENA_OFFSET + len(features)] = features
    pages = nan_pages(model.config.text)
    allocator = PageAllocator(NUM_PAGES, PAGE_SIZE)
    for step, ((a0, a1), (b0, b1)) in enumerate(schedule(len(a) - 3)):
        for seq, (start, stop) in (("a", (a0, a1)), ("b", (b0, b1))):
            if start == 0:
                allocator.allocate(seq, stop)
            else:
                allocator.append_slots(seq, stop - start)
        metadata = build_attention_metadata(
            [allocator.block_table("a"), allocator.block_table("b")], kv_lens=[a1, b1],
            q_lens=[a1 - a0, b1 - b0], page_size=PAGE_SIZE)
        ids = np.zeros(metadata.num_tokens, np.int32)
        ids[: a1 - a0], ids[a1 - a0 : a1 - a0 + b1 - b0] = a[a0:a1], b[b0:b1]
        last = np.array([a1 - a0 - 1, a1 - a0 + b1 - b0 - 1], np.int32)
        # A's image embeddings, computed once, fill its placeholder tokens wherever the chunk cuts.
        slots = np.full(metadata.num_tokens, -1, np.int32)
        rows = feature_row[a0:a1]
        slots[: a1 - a0] = np.where(rows >= 0, ARENA_OFFSET + rows, -1)
        one_replica = jax.tree.map(lambda x: x[None], (ids, metadata, last))  # R = 1
        logits, pages = paged_step(graphdef, state, pages, *one_replica, jnp.asarray(arena), slots[None], impl=impl)
        logits = np.asarray(logits)
        assert np.isfinite(logits).all(), f"step {step} read an unwritten (NaN) cache slot"
        assert relative_error(logits[0], dense_a[a1 - 1]) < 1e-4, f"sequence a, step {step}"
        assert relative_error(logits[1], dense_b[b1 - 1]) < 1e-4, f"sequence b, step {step}"
