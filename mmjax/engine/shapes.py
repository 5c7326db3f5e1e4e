"""``StepShapes``: the fixed set of shapes every engine step takes, from the config and the model.

Every array entering ``jit`` has a shape from this set: the token axis is one
of ``token_buckets``, the sequence axis is always ``max_num_seqs``, block
tables are always ``pages_per_seq`` wide, and placeholder embeddings come from
an arena of ``embedding_rows`` rows per replica. The batch builder, the device
runner, memory planning and warm-up all read them here.
"""

from __future__ import annotations

import dataclasses

from mmjax.engine.config import EngineConfig

#: Rows of the embedding arena are handed out in blocks of this many (block 0 is reserved, as page 0 is).
EMBEDDING_BLOCK_ROWS = 16

#: The encoder cache's default budget, in prompts at the registered limit (``EngineConfig.encoder_cache_tokens``).
DEFAULT_ENCODER_CACHE_PROMPTS = 8


@dataclasses.dataclass(frozen=True, kw_only=True)
class StepShapes:
    """The shapes of one engine's steps.

    Attributes:
      num_replicas: ``R``, the data replicas (the mesh's "data" axis; 1 on one device).
      token_buckets: sizes of the packed token axis ``T`` of a step with a prefill chunk.
      decode_buckets: sizes of ``T`` for a pure decode step (``EngineConfig.decode_buckets``).
      max_num_seqs: the sequence axis ``B`` of every step, per replica.
      page_size: ``G``, tokens per KV page.
      pages_per_seq: ``W``, the block-table width (``max_model_len / G``, rounded up).
      max_model_len: the longest sequence, prompt plus output.
      embedding_rows: rows of each replica's arena of placeholder embeddings (0: the model has no encoder):
        room for ``max_num_seqs`` prompts at the limit, the encoder cache's budget and the reserved block.
      rows_per_prompt: arena rows one prompt may take (its placeholders, rounded up to blocks).
      encoder_batch_buckets: request counts one encoder call may take (``EngineConfig.encoder_batch_buckets``).
    """

    num_replicas: int
    token_buckets: tuple[int, ...]
    decode_buckets: tuple[int, ...]
    max_num_seqs: int
    page_size: int
    pages_per_seq: int
    max_model_len: int
    embedding_rows: int
    rows_per_prompt: int = 0
    encoder_batch_buckets: tuple[int, ...] = (1,)

    @classmethod
    def build(cls, config: EngineConfig, *, max_model_len: int, num_replicas: int,
              max_mm_tokens_per_prompt: int, max_mm_items_per_prompt: int = 1) -> StepShapes:
        """The shapes for ``config``: the arena holds the placeholders of ``max_num_seqs`` prompts at
        the limit, plus ``config.encoder_cache_tokens`` (default: 8 prompts at the limit) of cache.

        Rows are handed out per item, each item's rounded up to whole blocks: a prompt of ``n`` items
        takes at most ``n - 1`` blocks more than its placeholders rounded up."""
        rows = per_prompt = 0
        if max_mm_tokens_per_prompt:
            per_prompt = -(-max_mm_tokens_per_prompt // EMBEDDING_BLOCK_ROWS)
            prompt_blocks = per_prompt + max(0, max_mm_items_per_prompt - 1)
            cache = config.encoder_cache_tokens
            cache = DEFAULT_ENCODER_CACHE_PROMPTS * max_mm_tokens_per_prompt if cache is None else cache
            blocks = config.max_num_seqs * prompt_blocks + -(-cache // EMBEDDING_BLOCK_ROWS)
            rows = (blocks + 1) * EMBEDDING_BLOCK_ROWS  # + the reserved block
        return cls(num_replicas=num_replicas, token_buckets=config.token_buckets,
                   decode_buckets=config.decode_buckets, max_num_seqs=config.max_num_seqs,
                   page_size=config.page_size, pages_per_seq=-(-max_model_len // config.page_size),
                   max_model_len=max_model_len, embedding_rows=rows, rows_per_prompt=per_prompt * EMBEDDING_BLOCK_ROWS,
                   encoder_batch_buckets=config.encoder_batch_buckets)

    @property
    def sample_rows(self) -> int:
        """Rows of a step's logits ``[R * B, V]``: one per sequence slot of every replica."""
        return self.num_replicas * self.max_num_seqs
