"""From a scheduler decision to the arrays of one step, in bucketed shapes (host, numpy).

Every array that enters ``jit`` has a shape from a small set fixed by the engine
config: the token axis is one of ``token_buckets``, the sequence axis is always
``max_num_seqs`` and the block tables are always ``pages_per_seq`` wide. So after
warm-up a workload of any prompt lengths and image sizes compiles nothing new.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from mmjax.engine.scheduler import ScheduledChunk
from mmjax.kv_cache import AttentionMetadata, PageAllocator, build_attention_metadata


@dataclasses.dataclass(frozen=True)
class StepBatch:
    """The inputs of one ``paged_step`` and what the host needs to read its outputs.

    Attributes:
      input_ids: i32 ``[T]``.
      metadata: the attention metadata (``max_q_len`` is 1 for a pure decode step, else T).
      logits_indices: i32 ``[S]`` (or ``[T]`` when prompt logprobs are wanted).
      mm_embeds, mm_mask: ``[T, D]`` and bool ``[T]`` when a chunk holds placeholders, else None.
      sample_rows: for each chunk, its row in the returned logits.
    """

    input_ids: np.ndarray
    metadata: AttentionMetadata
    logits_indices: np.ndarray
    mm_embeds: np.ndarray | None
    mm_mask: np.ndarray | None
    sample_rows: tuple[int, ...]
    chunk_offsets: tuple[int, ...]


def build_step_batch(
    chunks: Sequence[ScheduledChunk],
    allocator: PageAllocator,
    *,
    token_buckets: Sequence[int],
    max_num_seqs: int,
    pages_per_seq: int,
    all_logits: bool = False,
) -> StepBatch:
    """Pack the chunks' tokens, block tables and multimodal embeddings into one step."""
    tables = [allocator.block_table(c.request.request_id) for c in chunks]
    metadata = build_attention_metadata(
        tables, kv_lens=[c.stop for c in chunks], q_lens=[c.num_tokens for c in chunks],
        page_size=allocator.page_size, token_buckets=token_buckets, seq_buckets=[max_num_seqs],
        page_buckets=[pages_per_seq],
    )
    num_tokens = metadata.num_tokens
    if metadata.max_q_len > 1:  # one static value for every prefill step of this token bucket
        metadata = dataclasses.replace(metadata, max_q_len=num_tokens)
    offsets = np.concatenate([[0], np.cumsum([c.num_tokens for c in chunks])]).astype(np.int64)
    input_ids = np.zeros(num_tokens, np.int32)
    for chunk, start in zip(chunks, offsets):
        input_ids[start:start + chunk.num_tokens] = chunk.request.token_ids(chunk.start, chunk.stop)
    last = offsets[1:] - 1
    if all_logits:
        logits_indices, sample_rows = np.arange(num_tokens, dtype=np.int32), tuple(int(i) for i in last)
    else:
        logits_indices = np.zeros(max_num_seqs, np.int32)
        logits_indices[: len(chunks)] = last
        sample_rows = tuple(range(len(chunks)))
    mm_embeds, mm_mask = _multimodal_rows(chunks, offsets, num_tokens)
    return StepBatch(input_ids, metadata, logits_indices, mm_embeds, mm_mask, sample_rows,
                     tuple(int(o) for o in offsets[:-1]))


def _multimodal_rows(
    chunks: Sequence[ScheduledChunk], offsets: np.ndarray, num_tokens: int
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Token-aligned placeholder embeddings for the chunks that hold placeholders."""
    pieces = []
    for chunk, start in zip(chunks, offsets):
        request = chunk.request
        stop = min(chunk.stop, request.num_prompt_tokens)
        if request.mm_embeds is None or chunk.start >= stop:
            continue
        rows = request.mm_rows[chunk.start:stop]
        where = np.nonzero(rows >= 0)[0]
        if where.size:
            pieces.append((start + where, request.mm_embeds[rows[where]]))
    if not pieces:
        return None, None
    width, dtype = pieces[0][1].shape[1], pieces[0][1].dtype
    mm_embeds = np.zeros((num_tokens, width), dtype)
    mm_mask = np.zeros(num_tokens, bool)
    for positions, embeds in pieces:
        mm_embeds[positions] = embeds
        mm_mask[positions] = True
    return mm_embeds, mm_mask
