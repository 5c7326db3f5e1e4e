"""Random ragged paged-attention cases, built with numpy only (independent of mmjax's scatter).

Block tables are random permutations of the pool, and every slot that holds no
token of a live sequence (the null page, free pages, tails of partial pages) is
NaN: a NaN in an output means a kernel read something it must not.
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

    def args(self, dtype=None):
        dt = dtype or self.q.dtype
        md = self.metadata
        return (jnp.asarray(self.q, dt), jnp.asarray(self.k_pages, dt), jnp.asarray(self.v_pages, dt),
                jnp.asarray(md.kv_lens), jnp.asarray(md.block_tables), jnp.asarray(md.cu_q_lens),
                jnp.asarray(md.num_seqs))


def make_case(
    rng: np.random.Generator, seqs: list[tuple[int, int]], *, num_kv_heads: int, group: int,
    head_dim: int, page_size: int, spare_pages: int = 3, token_buckets=None, page_buckets=None,
) -> Case:
    """`seqs` is a list of (kv_len, q_len); query tokens are each sequence's last q_len."""
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
    md = build_attention_metadata(tables, [kv for kv, _ in seqs], q_lens, page_size=page_size,
                                  token_buckets=token_buckets, page_buckets=page_buckets)
    q = rng.standard_normal((md.num_tokens, num_kv_heads * group, head_dim)).astype(np.float32)
    return Case(q, k_pages, v_pages, md, keys, values, q_lens)


def dense_attention(case: Case, sm_scale: float | None = None) -> np.ndarray:
    """Causal attention per sequence over contiguous K/V, float64 numpy softmax."""
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
        logits = np.where(np.arange(kv_len)[None, None, :] <= pos[None, :, None], logits, -np.inf)
        p = np.exp(logits - logits.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        out[cu[b] : cu[b] + q_len] = np.einsum("nts,snh->tnh", p, v)
    return out
