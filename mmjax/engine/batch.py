"""From a scheduler decision to the arrays of one step, in bucketed shapes (host, numpy).

Every array that enters ``jit`` has a shape from a small set fixed by the engine
config: the token axis is one of ``token_buckets``, the sequence axis is always
``max_num_seqs`` and the block tables are always ``pages_per_seq`` wide. So after
warm-up a workload of any prompt lengths and image sizes compiles nothing new.

Every array has a leading replica axis ``R`` (the mesh's ``"data"`` axis; 1 on
one device): replica ``r``'s row is its own ragged batch over its own pages,
with page ids local to its slice of the cache. All replicas share one token
bucket, the largest any of them needs.

Placeholder embeddings never pass through here: they stay in the device
runner's arena, and a step carries only each token's arena row
(``embedding_slots``, -1 for a token that uses its own embedding).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from mmjax.engine.scheduler import ScheduledChunk
from mmjax.kv_cache import AttentionMetadata, PageAllocator, build_attention_metadata
from mmjax.kv_cache.metadata import bucket


@dataclasses.dataclass(frozen=True)
class StepBatch:
    """The inputs of one ``paged_step`` and what the host needs to read its outputs.

    Attributes:
      input_ids: i32 ``[R, T]``.
      metadata: the attention metadata, each field with a leading ``R`` (``max_q_len``
        is 1 for a pure decode step, else T).
      logits_indices: i32 ``[R, B]`` (``[R, T]`` when prompt logprobs are wanted).
      embedding_slots: i32 ``[R, T]``: the arena row of each placeholder token's embedding, -1 for
        every other token; None for a model without multimodal embeddings.
      rope_positions: i32 ``[R, P, T]``: each token's rotary positions, for a decoder that reads
        ``P > 1`` per token (M-RoPE); None when they are ``metadata.positions``.
      sample_rows: for each chunk, its row in the returned logits ``[R * B, V]`` (or ``[R * T, V]``).
      chunk_offsets: for each chunk, the row of its first token in the flattened ``[R * T]`` tokens.
      all_logits: the logits of every token are returned (prompt logprobs), not one row per sequence.
    """

    input_ids: np.ndarray
    metadata: AttentionMetadata
    logits_indices: np.ndarray
    embedding_slots: np.ndarray | None
    sample_rows: tuple[int, ...]
    chunk_offsets: tuple[int, ...]
    all_logits: bool = False
    rope_positions: np.ndarray | None = None

    def step_extras(self) -> dict[str, np.ndarray]:
        """The optional step inputs this batch carries, by ``paged_step``'s keyword."""
        return {} if self.rope_positions is None else {"rope_positions": self.rope_positions}

    @property
    def num_tokens(self) -> int:
        """T, the bucketed token axis of each replica."""
        return self.input_ids.shape[1]


def build_step_batch(
    chunks: Sequence[ScheduledChunk],
    allocators: Sequence[PageAllocator],
    *,
    token_buckets: Sequence[int],
    max_num_seqs: int,
    pages_per_seq: int,
    decode_buckets: Sequence[int] = (),
    all_logits: bool = False,
    with_embeddings: bool = False,
    rope_axes: int = 1,
) -> StepBatch:
    """Pack the chunks' tokens, block tables and placeholder-embedding rows into one step.

    The token axis is the smallest of ``token_buckets`` that holds every replica's tokens;
    for a pure decode step (every chunk one token, no prompt logprobs) the smallest of
    ``decode_buckets``, when given.

    ``allocators[r]`` holds replica ``r``'s pages; ``chunk.replica`` says whose a chunk is.
    ``with_embeddings``: the model has multimodal embeddings, so every step carries
    ``embedding_slots`` (a request's ``mm_slots`` say where its embeddings are).
    ``rope_axes``: rotary positions per token; above 1 (M-RoPE) every step carries ``rope_positions``.
    """
    num_replicas = len(allocators)
    groups = [[c for c in chunks if c.replica == r] for r in range(num_replicas)]
    prefill = any(c.num_tokens > 1 for c in chunks)
    buckets = decode_buckets if decode_buckets and not prefill and not all_logits else token_buckets
    num_tokens = bucket(max(sum(c.num_tokens for c in g) for g in groups), buckets)
    metadata = [_replica_metadata(g, allocators[r], num_tokens, max_num_seqs, pages_per_seq)
                for r, g in enumerate(groups)]
    metadata = AttentionMetadata(
        **{f: np.stack([getattr(m, f) for m in metadata]) for f in _ARRAY_FIELDS},
        max_q_len=num_tokens if prefill else 1)  # one static value for every prefill step of this bucket
    input_ids = np.zeros((num_replicas, num_tokens), np.int32)
    rows_per_replica = num_tokens if all_logits else max_num_seqs
    logits_indices = np.zeros((num_replicas, rows_per_replica), np.int32)
    if all_logits:
        logits_indices[:] = np.arange(num_tokens)
    where: dict[int, tuple[int, int, int]] = {}  # id(chunk) -> (replica, index in replica, first token)
    for r, group in enumerate(groups):
        offset = 0
        for j, chunk in enumerate(group):
            input_ids[r, offset:offset + chunk.num_tokens] = chunk.request.token_ids(chunk.start, chunk.stop)
            where[id(chunk)] = (r, j, offset)
            offset += chunk.num_tokens
            if not all_logits:
                logits_indices[r, j] = offset - 1
    sample_rows, chunk_offsets = [], []
    for chunk in chunks:
        r, j, offset = where[id(chunk)]
        chunk_offsets.append(r * num_tokens + offset)
        sample_rows.append(r * num_tokens + offset + chunk.num_tokens - 1 if all_logits else r * max_num_seqs + j)
    slots = _embedding_slots(chunks, chunk_offsets, num_replicas, num_tokens) if with_embeddings else None
    rope = _rope_positions(chunks, chunk_offsets, num_replicas, num_tokens, rope_axes) if rope_axes > 1 else None
    return StepBatch(input_ids, metadata, logits_indices, slots, tuple(sample_rows), tuple(chunk_offsets), all_logits,
                     rope)


_ARRAY_FIELDS = ("block_tables", "kv_lens", "cu_q_lens", "num_seqs", "slot_mapping", "positions", "key_ends")


def _replica_metadata(
    chunks: Sequence[ScheduledChunk], allocator: PageAllocator, num_tokens: int, max_num_seqs: int,
    pages_per_seq: int,
) -> AttentionMetadata:
    return build_attention_metadata(
        [allocator.block_table(c.request.request_id) for c in chunks], kv_lens=[c.stop for c in chunks],
        q_lens=[c.num_tokens for c in chunks], page_size=allocator.page_size, token_buckets=[num_tokens],
        seq_buckets=[max_num_seqs], page_buckets=[pages_per_seq],
        bidirectional_spans=[c.request.bidirectional_spans for c in chunks])


def _embedding_slots(
    chunks: Sequence[ScheduledChunk], offsets: Sequence[int], num_replicas: int, num_tokens: int,
) -> np.ndarray:
    """Each packed token's arena row ``[R, T]``: its embedding's for a placeholder, else -1."""
    slots = np.full(num_replicas * num_tokens, -1, np.int32)
    for chunk, start in zip(chunks, offsets):
        request = chunk.request
        stop = min(chunk.stop, request.num_prompt_tokens)
        if chunk.start >= stop:
            continue
        rows = request.mm_rows[chunk.start:stop]
        where = np.nonzero(rows >= 0)[0]
        if where.size:
            slots[start + where] = request.mm_slots[rows[where]]
    return slots.reshape(num_replicas, num_tokens)


def _rope_positions(
    chunks: Sequence[ScheduledChunk], offsets: Sequence[int], num_replicas: int, num_tokens: int, axes: int,
) -> np.ndarray:
    """Each packed token's rotary positions ``[R, P, T]`` (padding: 0; its K/V go nowhere)."""
    rope = np.zeros((axes, num_replicas * num_tokens), np.int32)
    for chunk, start in zip(chunks, offsets):
        rope[:, start:start + chunk.num_tokens] = chunk.request.rope_positions(chunk.start, chunk.stop, axes)
    return rope.reshape(axes, num_replicas, num_tokens).transpose(1, 0, 2).copy()


def empty_step_batch(
    num_replicas: int, num_tokens: int, *, decode: bool, max_num_seqs: int, pages_per_seq: int, page_size: int,
    all_logits: bool = False, with_embeddings: bool = False, rope_axes: int = 1,
) -> StepBatch:
    """A step that schedules no sequence (every slot padding, nothing written): for warm-up."""
    one = build_attention_metadata([], [], [], page_size=page_size, token_buckets=[num_tokens],
                                   seq_buckets=[max_num_seqs], page_buckets=[pages_per_seq])
    metadata = AttentionMetadata(
        **{f: np.stack([getattr(one, f)] * num_replicas) for f in _ARRAY_FIELDS},
        max_q_len=1 if decode else num_tokens)
    rows = num_tokens if all_logits else max_num_seqs
    slots = np.full((num_replicas, num_tokens), -1, np.int32) if with_embeddings else None
    rope = np.zeros((num_replicas, rope_axes, num_tokens), np.int32) if rope_axes > 1 else None
    return StepBatch(np.zeros((num_replicas, num_tokens), np.int32), metadata,
                     np.zeros((num_replicas, rows), np.int32), slots, (), (), all_logits, rope)
