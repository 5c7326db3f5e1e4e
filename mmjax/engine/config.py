"""``EngineConfig``: the knobs of continuous batching and of the KV cache."""

from __future__ import annotations

import dataclasses

from mmjax.attention.dispatch import IMPLS
from mmjax.engine.defaults import default_batch_sizes, default_encoder_batch


@dataclasses.dataclass(frozen=True, kw_only=True)
class EngineConfig:
    """How the engine batches and how large its KV cache is.

    On a mesh with a "data" axis of ``R`` replicas, the sequence and token
    budgets and ``num_pages`` are per replica (``R`` times as many run at once)
    and ``kv_cache_bytes`` is per device.

    Attributes:
      page_size: tokens per KV page.
      max_num_seqs: most sequences in one step (the fixed sequence axis of every step).
        Default: 16 on CPU, 64 on GPU/TPU (``mmjax.engine.defaults``).
      max_num_batched_tokens: the token budget of one step; long prompts are
        prefilled in chunks of at most this many tokens. Default: 2048 on CPU,
        vLLM's for the device on GPU/TPU (8192 or 16384; 512-2048 on TPU).
      num_pages: KV pages of each replica (overrides the memory plan).
      kv_cache_bytes: bytes of KV cache per device (overrides the memory plan).
      memory_utilization: share of an accelerator's memory the engine may use.
      max_model_len: longest sequence (prompt + output); default: the model's context.
      impl: attention implementation: "auto" (Pallas on GPU/TPU, the native kernel on CPU,
        plain XLA where it cannot be built), "pallas", "cpu", "xla" or "reference". With
        "auto" or "cpu" on one CPU device, decode's few-row products run on the native
        matmul kernel too; "xla" and "reference" keep every product in XLA.
      max_encoder_batch: most requests whose items one encoder call takes (those a step
        starts, with inputs of one shape, padded to a power of two). Default: 8 on GPU/TPU,
        1 on CPU, where batching measured slower (``mmjax.engine.defaults``).
      enable_prefix_caching: keep full KV pages by content (token ids, and the image for
        placeholder tokens) and let a new request reuse its longest cached prefix. On by default.
      encoder_cache_tokens: arena rows (placeholder embeddings) kept for recently encoded items
        beyond those of the running prompts, so that a later request with the same items does
        not run the encoder. Default: 8 prompts at the model's limit; 0 disables it.
      batch_invariant: a request's logits, logprobs, sampled tokens (seeded) and text do not depend on
        which requests share its steps, on how its prompt is chunked or on the page size, and its
        prompt logprobs equal ``mmjax.score``'s bit for bit (``mmjax.batch_invariant``; docs/batch_invariance.md).
        Slower: products and attention run in one fixed order, each request's items are encoded alone
        (``max_encoder_batch`` 1), and ``impl`` must stay "auto". One device only (no mesh). Off by default.
    """

    page_size: int = 16
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    num_pages: int | None = None
    kv_cache_bytes: int | None = None
    memory_utilization: float = 0.9
    max_model_len: int | None = None
    impl: str = "auto"
    max_encoder_batch: int | None = None
    enable_prefix_caching: bool = True
    encoder_cache_tokens: int | None = None
    batch_invariant: bool = False

    def __post_init__(self) -> None:
        self._fill_batch_sizes()
        if not isinstance(self.batch_invariant, bool):
            raise ValueError(f"EngineConfig.batch_invariant must be True or False, got {self.batch_invariant!r}")
        if self.max_encoder_batch is None:
            object.__setattr__(self, "max_encoder_batch", 1 if self.batch_invariant else default_encoder_batch())
        if self.batch_invariant and self.max_encoder_batch != 1:
            raise ValueError(f"EngineConfig.batch_invariant=True encodes each request's items alone, as mmjax.score "
                             f"does: max_encoder_batch must be 1 (or unset), got {self.max_encoder_batch!r}")
        if self.batch_invariant and self.impl != "auto":
            raise ValueError(f"EngineConfig.batch_invariant=True attends in its own fixed order (key blocks): impl "
                             f"must stay 'auto', got {self.impl!r}")
        for name in ("page_size", "max_num_seqs", "max_num_batched_tokens", "max_encoder_batch"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"EngineConfig.{name} must be an int >= 1, got {value!r}")
        if self.max_num_batched_tokens < self.max_num_seqs:
            raise ValueError(
                f"EngineConfig.max_num_batched_tokens ({self.max_num_batched_tokens}) must be >= "
                f"max_num_seqs ({self.max_num_seqs}): a decode step runs one token per sequence"
            )
        if not isinstance(self.enable_prefix_caching, bool):
            raise ValueError(f"EngineConfig.enable_prefix_caching must be True or False, "
                             f"got {self.enable_prefix_caching!r}")
        cache = self.encoder_cache_tokens
        if cache is not None and (isinstance(cache, bool) or not isinstance(cache, int) or cache < 0):
            raise ValueError(f"EngineConfig.encoder_cache_tokens must be an int >= 0 (0: off) or None, got {cache!r}")
        if self.num_pages is not None and self.num_pages < 2:
            raise ValueError(f"EngineConfig.num_pages must be >= 2 (page 0 is reserved), got {self.num_pages}")
        if not 0 < self.memory_utilization <= 1:
            raise ValueError(f"EngineConfig.memory_utilization must be in (0, 1], got {self.memory_utilization}")
        if self.impl not in IMPLS:
            raise ValueError(f"EngineConfig.impl must be one of {IMPLS}, got {self.impl!r}")

    def _fill_batch_sizes(self) -> None:
        """Unset batch sizes take the backend's defaults (a budget set alone bounds the sequences)."""
        if self.max_num_seqs is not None and self.max_num_batched_tokens is not None:
            return
        seqs, budget = default_batch_sizes()
        if self.max_num_batched_tokens is None:
            budget = max(budget, self.max_num_seqs) if isinstance(self.max_num_seqs, int) else budget
            object.__setattr__(self, "max_num_batched_tokens", budget)
        if self.max_num_seqs is None:
            budget = self.max_num_batched_tokens
            object.__setattr__(self, "max_num_seqs", min(seqs, budget) if isinstance(budget, int) else seqs)

    @property
    def encoder_batch_buckets(self) -> tuple[int, ...]:
        """Request counts an encoder call may take: powers of two below ``max_encoder_batch``, and it."""
        return _buckets_up_to(self.max_encoder_batch)

    @property
    def decode_buckets(self) -> tuple[int, ...]:
        """Token-axis sizes of a pure decode step (one token per sequence): powers of two, and
        ``max_num_seqs``. A step of n sequences takes the smallest that holds n, so decoding one
        sequence multiplies one row through the weights, not ``max_num_seqs`` rows."""
        return _buckets_up_to(self.max_num_seqs)

    @property
    def token_buckets(self) -> tuple[int, ...]:
        """Token-axis sizes a step may have: the decode size, powers of two from 16, the budget."""
        sizes = _buckets_up_to(self.max_num_batched_tokens, smallest=16) + (self.max_num_seqs,)
        return tuple(sorted({s for s in sizes if s <= self.max_num_batched_tokens}))


def _buckets_up_to(limit: int, smallest: int = 1) -> tuple[int, ...]:
    """Powers of two from `smallest` below `limit`, and `limit` itself, ascending."""
    sizes, size = {limit}, smallest
    while size < limit:
        sizes.add(size)
        size *= 2
    return tuple(sorted(sizes))
