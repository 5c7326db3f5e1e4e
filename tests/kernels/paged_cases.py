"""Random ragged paged-attention cases, built with numpy only (independent of mmjax's scatter).

Block tables are random permutations of the pool, and every slot that holds no
token of a live sequence (the null page, free pages, tails of partial pages) is
NaN: a NaN in an output means a kernel read something it must not.

Sliding windows and bidirectional spans: ``key_bounds`` computes each query token's keys
``[key_start, key_end)`` straight from the formula (not from mmjax), ``dense_attention`` masks
with them, and ``poison_outside`` NaNs the pages no query of a sequence may read, so a kernel
that reads (rather than skips) a block outside the window returns NaN.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

from mmjax.kv_cache import AttentionMetadata, build_attention_metadata


@dataclasses.dataclass
class Case:
    q: np.ndarray  # [T, N, H]
    k_pages: np.ndarray  # [K, A, G, H]
    v_pages: np.ndarray
    metadata: AttentionMetadata
    keys: list[np.ndarray]  # per sequence, contiguous [S_b, K, H]
    values: list[np.ndarray]
    q_lens: list[int]
    tables: list[list[int]]  # per sequence, its pages in order
    spans: list[list[tuple[int, int]]]  # per sequence, its bidirectional spans [start, stop)

    @property
    def page_size(self) -> int:
        return self.k_pages.shape[2]

    def positions(self, b: int) -> np.ndarray:
        kv_len = self.keys[b].shape[0]
        return np.arange(kv_len - self.q_lens[b], kv_len)

    def args(self, dtype=None):
        dt = dtype or self.q.dtype
        md = self.metadata
        return (jnp.asarray(self.q, dt), jnp.asarray(self.k_pages, dt), jnp.asarray(self.v_pages, dt),
                jnp.asarray(md.kv_lens), jnp.asarray(md.block_tables), jnp.asarray(md.cu_q_lens),
                jnp.asarray(md.num_seqs))


def make_case(
    rng: np.random.Generator, seqs: list[tuple[int, int]], *, num_kv_heads: int, group: int,
    head_dim: int, page_size: int, spare_pages: int = 3, token_buckets=None, page_buckets=None,
    spans: list[list[tuple[int, int]]] | None = None,
) -> Case:
    """`seqs` is a list of (kv_len, q_len); query tokens are each sequence's last q_len.

    `spans`: per sequence, its bidirectional spans (an image's positions), also given to the metadata."""
    n_pages = [-(-kv // page_size) for kv, _ in seqs]
    num_pages = 1 + sum(n_pages) + spare_pages
    pool = rng.permutation(np.arange(1, num_pages))
    tables, start = [], 0
    for n in n_pages:
        tables.append([int(p) for p in pool[start : start + n]])
        start += n
    shape = (num_kv_heads, num_pages, page_size, head_dim)
    k_pages, v_pages = np.full(shape, np.nan, np.float32), np.full(shape, np.nan, np.float32)
    keys, values = [], []
    for (kv, _), table in zip(seqs, tables):
        k = rng.standard_normal((kv, num_kv_heads, head_dim)).astype(np.float32)
        v = rng.standard_normal((kv, num_kv_heads, head_dim)).astype(np.float32)
        for s in range(kv):
            k_pages[:, table[s // page_size], s % page_size] = k[s]
            v_pages[:, table[s // page_size], s % page_size] = v[s]
        keys.append(k)
        values.append(v)
    q_lens = [q for _, q in seqs]
    spans = [[] for _ in seqs] if spans is None else [list(s) for s in spans]
    md = build_attention_metadata(tables, [kv for kv, _ in seqs], q_lens, page_size=page_size,
                                  token_buckets=token_buckets, page_buckets=page_buckets, bidirectional_spans=spans)
    q = rng.standard_normal((md.num_tokens, num_kv_heads * group, head_dim)).astype(np.float32)
    return Case(q, k_pages, v_pages, md, keys, values, q_lens, tables, spans)


def key_bounds(case: Case, window: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(key_start, key_end)`` ``[T]`` int32 from the formula: causal, cut by `window` (transformers'
    ``kv > q - window``), a span's tokens seeing to its end; padding tokens ``[0, 0)``."""
    start = np.zeros(case.metadata.num_tokens, np.int32)
    end = np.zeros(case.metadata.num_tokens, np.int32)
    cu = np.asarray(case.metadata.cu_q_lens)
    for b in range(len(case.q_lens)):
        for i, p in enumerate(case.positions(b)):
            e = p + 1
            for lo, hi in case.spans[b]:
                if lo <= p < hi:
                    e = max(e, hi)
            start[cu[b] + i] = 0 if window is None else max(p - window + 1, 0)
            end[cu[b] + i] = e
    return start, end


def poison_outside(case: Case, key_start: np.ndarray, key_end: np.ndarray) -> int:
    """NaN in the K and V pages that lie wholly outside every query's keys of their sequence.

    Returns how many pages were poisoned (a test asserts it poisoned some)."""
    cu = np.asarray(case.metadata.cu_q_lens)
    poisoned = 0
    for b, table in enumerate(case.tables):
        kv_len = case.keys[b].shape[0]
        start, end = np.clip(key_start[cu[b]:cu[b + 1]], 0, kv_len), np.clip(key_end[cu[b]:cu[b + 1]], 0, kv_len)
        seen = start < end
        lo, hi = (start[seen].min(), end[seen].max()) if seen.any() else (0, 0)
        for i, page in enumerate(table):
            if (i + 1) * case.page_size <= lo or i * case.page_size >= hi:
                case.k_pages[:, page] = np.nan
                case.v_pages[:, page] = np.nan
                poisoned += 1
    return poisoned


def dense_attention(case: Case, sm_scale: float | None = None, key_start: np.ndarray | None = None,
                    key_end: np.ndarray | None = None) -> np.ndarray:
    """Attention per sequence over contiguous K/V, float64 numpy softmax.

    Token t sees the keys k with ``key_start[t] <= k < key_end[t]`` and ``k < kv_len`` (default causal,
    ``[0, position + 1)``); a token that sees no key gives zeros."""
    q = case.q.astype(np.float64)
    num_tokens, num_heads, head_dim = q.shape
    scale = 1.0 / np.sqrt(head_dim) if sm_scale is None else sm_scale
    out = np.zeros((num_tokens, num_heads, head_dim))
    cu = np.asarray(case.metadata.cu_q_lens)
    for b, (k, v, q_len) in enumerate(zip(case.keys, case.values, case.q_lens)):
        kv_len, num_kv_heads, _ = k.shape
        group = num_heads // num_kv_heads
        k = np.repeat(k.astype(np.float64), group, axis=1)  # [S, N, H]
        v = np.repeat(v.astype(np.float64), group, axis=1)
        qb = q[cu[b] : cu[b] + q_len]  # [Tb, N, H]
        logits = np.einsum("tnh,snh->nts", qb, k) * scale
        pos = kv_len - q_len + np.arange(q_len)
        start = np.zeros(q_len) if key_start is None else key_start[cu[b] : cu[b] + q_len]
        end = pos + 1 if key_end is None else key_end[cu[b] : cu[b] + q_len]
        keys = np.arange(kv_len)[None, :]
        visible = (keys >= start[:, None]) & (keys < end[:, None])  # [t, s]; k < kv_len by construction
        logits = np.where(visible[None], logits, -np.inf)
        top = logits.max(-1, keepdims=True)
        p = np.exp(logits - np.where(np.isfinite(top), top, 0.0))
        p /= np.maximum(p.sum(-1, keepdims=True), np.finfo(np.float64).tiny)
        out[cu[b] : cu[b] + q_len] = np.einsum("nts,snh->tnh", p, v)
    return out
