"""Ragged paged attention: validated wrapper over the GPU/TPU kernels, and the jnp reference.

One call serves a ragged batch mixing decode (1 query token per sequence) and
prefill / chunked prefill (many): sequence b's query tokens are its last
``q_len_b`` tokens, packed in ``q[cu_q_lens[b]:cu_q_lens[b+1]]``, with
grouped-query attention (``N = K * Q`` query heads; a KV page is read once
for its Q query heads). Softmax accumulates in float32 for float32 and bfloat16.

Which keys a query sees: token ``t`` at position ``p`` sees the keys ``k`` of its sequence with
``key_start[t] <= k < key_end[t]`` and ``k < kv_len`` (absolute positions; optional ``[T]`` int32
arrays). The default is causal, ``[0, p + 1)``; a sliding window of ``W`` keys starts at
``max(p - W + 1, 0)``; a token of a bidirectional span (one image's tokens) ends at the span's end.
A token that sees no key outputs zeros. The kernels read only the K/V blocks that meet a query
tile's keys, so a windowed layer costs its window, not its context.

Writing the new K/V is a separate step, `mmjax.kv_cache.write_kv_to_pages`,
run before this kernel. Why not fused: a program would read pages that other
programs of the same call write (one sequence's query tiles run in parallel),
an ordering Pallas cannot express across programs on GPU; the scatter moves
O(T K H) bytes, nothing beside the cache read, and with donated pages XLA does
it in place. The kernels therefore only read the cache.

Inputs are ``q [T, N, H]``, pages ``[K, A, G, H]`` (see `mmjax.kv_cache.pages`),
``kv_lens [B]`` (including this step's tokens), ``block_tables [B, W]``,
``cu_q_lens [B+1]``, ``num_seqs [1]`` (sequences >= num_seqs are padding).
Output tokens that belong to no live sequence are zeros.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import math

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from mmjax.types import Array, Float, Int, shape_checked

FLOAT_DTYPES = (jnp.float32, jnp.bfloat16, jnp.float16)
BACKENDS = ("gpu", "tpu")


def _kernel(backend: str) -> tuple:
    """``(default (block_q, pages_per_block) for a group size and page size, kernel call)`` of ``backend``.

    Its module is imported here, on first use: the TPU kernel's (Pallas' Mosaic lowering) takes 0.2 s to
    import and the GPU kernel's (Triton) 0.03 s, which a process on another backend (the CPU kernel
    imports this module for ``with_validated_inputs``) would pay in every ``import mmjax``.
    """
    module = importlib.import_module(f"mmjax.kernels_pallas.ragged_paged_attention_{backend}")
    return module.default_block_sizes, getattr(module, f"ragged_paged_attention_{backend}")


def _is_tpu_interpret_params(interpret) -> bool:
    """Whether ``interpret`` is a ``pltpu.InterpretParams`` (asks for the TPU kernel, interpreted)."""
    if interpret is None or isinstance(interpret, bool):
        return False
    from jax.experimental.pallas import tpu as pltpu

    return isinstance(interpret, pltpu.InterpretParams)


def _fail(name: str, expected: str, got) -> None:
    raise ValueError(f"{name}: expected {expected}, got {got}")


def validate_inputs(q, k_pages, v_pages, kv_lens, block_tables, cu_q_lens, num_seqs,
                    key_start=None, key_end=None) -> None:
    """Raises a ValueError naming the argument and the expected vs actual shape/dtype."""
    if q.ndim != 3:
        _fail("q", "3 dims [T, N, H]", q.shape)
    if k_pages.ndim != 4:
        _fail("k_pages", "4 dims [K, A, G, H]", k_pages.shape)
    num_tokens, num_heads, head_dim = q.shape
    num_kv_heads, _, _, page_head_dim = k_pages.shape
    if v_pages.shape != k_pages.shape:
        _fail("v_pages", f"the shape of k_pages {k_pages.shape}", v_pages.shape)
    if page_head_dim != head_dim:
        _fail("k_pages", f"head dim H={head_dim} (last dim of q)", k_pages.shape)
    if num_heads % num_kv_heads:
        _fail("q", f"query heads N a multiple of KV heads K={num_kv_heads}", q.shape)
    if jnp.dtype(q.dtype) not in [jnp.dtype(d) for d in FLOAT_DTYPES]:
        _fail("q", "dtype float32, bfloat16 or float16", q.dtype)
    for name, pages in (("k_pages", k_pages), ("v_pages", v_pages)):
        if pages.dtype != q.dtype:
            _fail(name, f"dtype {q.dtype} (that of q)", pages.dtype)
    if block_tables.ndim != 2:
        _fail("block_tables", "2 dims [B, P]", block_tables.shape)
    num_batch = block_tables.shape[0]
    for name, x, shape in (("kv_lens", kv_lens, (num_batch,)), ("cu_q_lens", cu_q_lens, (num_batch + 1,)),
                           ("num_seqs", num_seqs, (1,))):
        if tuple(x.shape) != shape:
            _fail(name, f"shape {shape} (B={num_batch} from block_tables)", tuple(x.shape))
    for name, x in (("key_start", key_start), ("key_end", key_end)):
        if x is not None and tuple(x.shape) != (num_tokens,):
            _fail(name, f"shape ({num_tokens},) (T={num_tokens} from q)", tuple(x.shape))
    for name, x in (("kv_lens", kv_lens), ("block_tables", block_tables), ("cu_q_lens", cu_q_lens),
                    ("num_seqs", num_seqs), ("key_start", key_start), ("key_end", key_end)):
        if x is not None and x.dtype != jnp.int32:
            _fail(name, "dtype int32", x.dtype)


_ARRAY_ARGS = ("q", "k_pages", "v_pages", "kv_lens", "block_tables", "cu_q_lens", "num_seqs")
_OPTIONAL_ARRAY_ARGS = ("key_start", "key_end")


def with_validated_inputs(fn):
    """``fn`` that first runs ``validate_inputs`` on its array arguments.

    It sits outside ``shape_checked``, so a bad input raises the ValueError that
    names it even when the shape checks are on.
    """
    signature = inspect.signature(fn)

    @functools.wraps(fn)
    def validated(*args, **kwargs):
        arguments = signature.bind(*args, **kwargs).arguments
        validate_inputs(*(arguments[name] for name in _ARRAY_ARGS),
                        **{name: arguments.get(name) for name in _OPTIONAL_ARRAY_ARGS})
        return fn(*args, **kwargs)

    return validated


@functools.partial(jax.jit, static_argnames=("sm_scale", "max_q_len"))
@with_validated_inputs
@shape_checked
def ragged_paged_attention_reference(
    q: Float[Array, "T N H"],
    k_pages: Float[Array, "K A G H"],
    v_pages: Float[Array, "K A G H"],
    kv_lens: Int[Array, "B"],
    block_tables: Int[Array, "B W"],
    cu_q_lens: Int[Array, "B+1"],
    num_seqs: Int[Array, "1"],
    *,
    key_start: Int[Array, "T"] | None = None,
    key_end: Int[Array, "T"] | None = None,
    sm_scale: float | None = None,
    max_q_len: int | None = None,
) -> Float[Array, "T N H"]:
    """Plain-jnp ragged paged attention (the test oracle), float32 throughout.

    Gathers each sequence's pages into ``[B, W*G]`` keys and its queries into
    ``[B, max_q_len]`` rows; `max_q_len` (static, default T) must bound every q_len.
    Memory is O(B N max_q_len W G): fine for decode and short chunks on CPU.
    `key_start` / `key_end`: the keys each token sees (module docstring); None: causal. Unlike the
    kernels it reads every key of a sequence (masking, not skipping, those outside a window).
    """
    num_tokens, num_heads, head_dim = q.shape
    num_kv_heads, _, page_size, _ = k_pages.shape
    num_batch, pages_per_seq = block_tables.shape
    max_q = num_tokens if max_q_len is None else min(max_q_len, num_tokens)
    scale = 1.0 / math.sqrt(head_dim) if sm_scale is None else sm_scale

    live = jnp.arange(num_batch) < num_seqs[0]
    q_lens = jnp.where(live, cu_q_lens[1:] - cu_q_lens[:-1], 0)
    kv = jnp.where(live, kv_lens, 0)
    t = jnp.arange(max_q)
    q_valid = t < q_lens[:, None]  # [B, max_q]
    tok = jnp.where(q_valid, cu_q_lens[:-1, None] + t, num_tokens)
    qs = q.astype(jnp.float32)[jnp.minimum(tok, num_tokens - 1)]
    qs = qs.reshape(num_batch, max_q, num_kv_heads, num_heads // num_kv_heads, head_dim)  # t: the max_q axis

    s = jnp.arange(pages_per_seq * page_size)
    k_valid = s < kv[:, None]  # [B, S]
    def gather(pages):  # [K, A, G, H] -> [B, S, K, H], zeros past each sequence (no stale NaN)
        x = pages[:, block_tables].reshape(num_kv_heads, num_batch, -1, head_dim).transpose(1, 2, 0, 3)
        return jnp.where(k_valid[:, :, None, None], x.astype(jnp.float32), 0.0)

    k, v = gather(k_pages), gather(v_pages)
    logits = jnp.einsum("BtKQH,BSKH->BKQtS", qs, k) * scale
    q_pos = kv[:, None] - q_lens[:, None] + t  # absolute position of each query
    gathered = jnp.minimum(tok, num_tokens - 1)
    start = jnp.zeros_like(q_pos) if key_start is None else key_start[gathered]  # [B, max_q]
    end = q_pos + 1 if key_end is None else key_end[gathered]
    seen = (s[None, None, :] >= start[:, :, None]) & (s[None, None, :] < end[:, :, None])
    mask = (q_valid[:, :, None] & k_valid[:, None, :] & seen)[:, None, None]
    logits = jnp.where(mask, logits, -jnp.inf)
    m = jnp.max(logits, axis=-1, keepdims=True)
    p = jnp.where(mask, jnp.exp(logits - jnp.where(jnp.isfinite(m), m, 0.0)), 0.0)
    p = p / jnp.maximum(jnp.sum(p, axis=-1, keepdims=True), jnp.finfo(jnp.float32).tiny)
    out = jnp.einsum("BKQtS,BSKH->BtKQH", p, v).reshape(num_batch * max_q, num_heads, head_dim)
    result = jnp.zeros((num_tokens, num_heads, head_dim), q.dtype)
    return result.at[tok.reshape(-1)].set(out.astype(q.dtype), mode="drop")


def _default_backend(interpret) -> str:
    platform = jax.default_backend()
    if platform in BACKENDS:
        return platform
    if _is_tpu_interpret_params(interpret):
        return "tpu"
    if interpret:
        return "gpu"  # the Triton-style kernel interprets fastest on CPU
    raise ValueError(
        f"backend: no Pallas kernel for platform {platform!r}; pass interpret=True or use the reference")


@functools.partial(
    jax.jit,
    static_argnames=("sm_scale", "backend", "block_q", "pages_per_block", "max_q_len", "interpret"),
)
@with_validated_inputs
@shape_checked
def ragged_paged_attention(
    q: Float[Array, "T N H"],
    k_pages: Float[Array, "K A G H"],
    v_pages: Float[Array, "K A G H"],
    kv_lens: Int[Array, "B"],
    block_tables: Int[Array, "B W"],
    cu_q_lens: Int[Array, "B+1"],
    num_seqs: Int[Array, "1"],
    *,
    key_start: Int[Array, "T"] | None = None,
    key_end: Int[Array, "T"] | None = None,
    sm_scale: float | None = None,
    backend: str | None = None,
    block_q: int | None = None,
    pages_per_block: int | None = None,
    max_q_len: int | None = None,
    interpret=False,
) -> Float[Array, "T N H"]:
    """The Pallas kernel for `backend` ("gpu" | "tpu", default: this platform).

    `block_q` (query tokens per tile) and `pages_per_block` (pages per step)
    default per backend; a known `max_q_len` (static) caps `block_q`, so a decode
    step uses one-token tiles. `interpret` runs the kernel on CPU (True, or a
    `pltpu.InterpretParams` for the TPU kernel). `key_start` / `key_end`: the keys
    each token sees (module docstring); None: causal.
    """
    backend = backend or _default_backend(interpret)
    if backend not in BACKENDS:
        _fail("backend", f"one of {BACKENDS}", repr(backend))
    default_block_sizes, kernel = _kernel(backend)
    group = q.shape[1] // k_pages.shape[0]
    default_q, default_pages = default_block_sizes(group, k_pages.shape[2])
    if block_q is None:
        block_q = default_q if max_q_len is None else min(default_q, pl.next_power_of_2(max_q_len))
    pages_per_block = default_pages if pages_per_block is None else pages_per_block
    for name, value in (("block_q", block_q), ("pages_per_block", pages_per_block)):
        if not (isinstance(value, int) and value > 0):
            _fail(name, "a positive int", value)
    scale = 1.0 / math.sqrt(q.shape[2]) if sm_scale is None else float(sm_scale)
    return kernel(
        q, k_pages, v_pages, kv_lens, block_tables, cu_q_lens, num_seqs, key_start=key_start, key_end=key_end,
        sm_scale=scale, block_q=block_q, pages_per_block=pages_per_block, interpret=interpret)
