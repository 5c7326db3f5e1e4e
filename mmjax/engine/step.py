"""The jitted device functions of the engine: encode a request's items into the arena, run one paged step.

Tokens of all scheduled sequences are packed along one axis; ``AttentionMetadata``
says which belong to whom and where their K/V go. Placeholder tokens take their
embeddings from the embedding arena (computed once per request by
``encode_into_arena``, kept on the device), gathered by the row each token
names in ``embedding_slots``, so a prefill chunk may end in the middle of an
image. Only the rows named by ``logits_indices`` reach the LM head. The KV
pages are donated, so XLA updates them in place; each decoder layer takes its
pages and returns the new ones.

The model is called only through ``mmjax.models.common.interface.EngineModel``.

``step_program`` and ``encoder_program`` are the same functions bound to one
model, as the device runner calls them every step: the graph and the structure
of the state are fixed once, so a call passes only arrays. (Passed as
arguments, the graph is hashed and the state flattened on every call: 27 ms
of host time per step on the benchmark model, measured with ``jax.profiler``.)
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from mmjax.attention import PagedAttend
from mmjax.batch_invariant import batch_invariant_numerics
from mmjax.engine.compilation import compiler_options
from mmjax.engine.graph_identity import graph_identity
from mmjax.engine.program_store import StoredProgram
from mmjax.engine.sampler import first_argmax
from mmjax.kv_cache.metadata import AttentionMetadata
from mmjax.kv_cache.pages import KVPages
from mmjax.models.common.linear import few_row_products_on_cpu
from mmjax.models.common.native_attention import native_attention_on_cpu
from mmjax.types import Array, Float, Int


@functools.partial(jax.jit, static_argnums=0)
def encode_multimodal(graphdef: nnx.GraphDef, state: nnx.State, mm_kwargs: Mapping[str, Array]) -> Float[Array, "M D"]:
    """The embeddings of a request's placeholder tokens, in placeholder order (vision tower + projector)."""
    return nnx.merge(graphdef, state).multimodal_embeddings(**mm_kwargs)


@functools.partial(jax.jit, static_argnums=0)
def encode_batch_invariant(graphdef: nnx.GraphDef, state: nnx.State, mm_kwargs: Mapping[str, Array]
                           ) -> Float[Array, "M D"]:
    """``encode_multimodal`` traced in batch-invariant numerics (``mmjax.batch_invariant``): the one program an
    engine with ``batch_invariant=True`` and ``mmjax.score`` both encode a request's items with, so both get
    the same bits (one compiled program for inputs of one shape, whatever surrounds it)."""
    with batch_invariant_numerics():
        return nnx.merge(graphdef, state).multimodal_embeddings(**mm_kwargs)


@functools.partial(jax.jit, donate_argnums=0)
def write_arena_rows(arena: Float[Array, "1 U D"], embeds: Float[Array, "M D"], rows: Int[Array, "M"]
                     ) -> Float[Array, "1 U D"]:
    """``arena`` (donated) with ``embeds[m]`` at row ``rows[m]``; rows ``>= U`` are dropped."""
    return arena.at[0, rows].set(embeds.astype(arena.dtype), mode="drop")


@functools.partial(jax.jit, static_argnames=("graphdef", "arena_sharding", "batched"), donate_argnames=("arena",))
def encode_into_arena(
    graphdef: nnx.GraphDef,
    state: nnx.State,
    arena: Float[Array, "1 U D"],
    mm_kwargs: Mapping[str, Array],
    rows: Int[Array, "M"] | Int[Array, "n M"],
    *,
    arena_sharding: jax.sharding.Sharding | None = None,
    batched: bool = False,
) -> Float[Array, "1 U D"]:
    """``arena`` with the request's embeddings written at ``rows`` (donated: updated in place).

    ``rows[m]`` is the arena row of embedding ``m``; rows ``>= U`` (the padding
    the encoder's bucketed output carries past the real placeholders) are dropped.
    ``arena_sharding``: keep the result where the arena was (one replica's devices).
    ``batched``: ``n`` requests whose items have one shape, in one call: each of
    ``mm_kwargs`` carries a leading ``n`` and ``rows[i, m]`` is request ``i``'s row
    of embedding ``m`` (a padding request's rows are all dropped).
    """
    model = nnx.merge(graphdef, state)
    if batched:
        embeds = jax.vmap(lambda mm: model.multimodal_embeddings(**mm))(dict(mm_kwargs))  # [n, M, D]
        embeds, rows = embeds.reshape(-1, embeds.shape[-1]), rows.reshape(-1)
    else:
        embeds = model.multimodal_embeddings(**mm_kwargs)
    arena = arena.at[0, rows].set(embeds.astype(arena.dtype), mode="drop")
    if arena_sharding is not None:
        arena = jax.lax.with_sharding_constraint(arena, arena_sharding)
    return arena


@functools.partial(jax.jit, static_argnames=("graphdef", "impl", "kv_sharding"), donate_argnames=("kv_pages",))
def paged_step(
    graphdef: nnx.GraphDef,
    state: nnx.State,
    kv_pages: tuple[KVPages, ...],
    input_ids: Int[Array, "R T"],
    metadata: AttentionMetadata,
    logits_indices: Int[Array, "R B"],
    embeddings: Float[Array, "R U W"] | None = None,
    embedding_slots: Int[Array, "R T"] | None = None,
    *,
    rope_positions: Int[Array, "R P T"] | None = None,
    impl: str = "auto",
    kv_sharding: jax.sharding.NamedSharding | None = None,
) -> tuple[Float[Array, "R*B V"], tuple[KVPages, ...]]:
    """One engine step over ``R`` data replicas (``R`` = the mesh's "data" axis, 1 on one device).

    Args:
      kv_pages: one ``KVPages`` per decoder layer (donated); on a mesh, the page
        axis is split over "data" (replica ``r`` owns the ``r``-th slice) and the
        KV heads as ``mmjax.sharding.kv_head_layout`` says.
      input_ids: each replica's packed query tokens (padding: any id, slot -1).
      metadata: block tables, lengths, slots and positions of the packed tokens,
        each field with a leading ``R``; page ids are local to the replica's slice.
      logits_indices: rows of each replica's ``input_ids`` whose logits are returned.
      embeddings, embedding_slots: each replica's embedding arena, and for each
        token the arena row of its embedding (-1: the token's own); both or neither.
      rope_positions: each token's rotary positions when the decoder reads ``P > 1`` per token
        (M-RoPE); None: ``metadata.positions``.
      kv_sharding: on a mesh, where the pages live (``mmjax.sharding.kv_pages_sharding``):
        attention runs per device (``shard_map``) and the new pages are pinned
        there, so the donated buffers are reused and the next step sees the same sharding.
      impl: the attention implementation; with "auto" or "cpu" on one CPU device, the linear layers'
        few-row products (decode) run on the native CPU kernels too (``few_row_products_on_cpu``).

    Returns:
      ``(logits f32[R * B, V], new kv_pages)``: replica ``r``'s rows are ``r * B:(r + 1) * B``.
    """
    logits, pages = step_logits(graphdef, state, kv_pages, input_ids, metadata, logits_indices, embeddings,
                                embedding_slots, rope_positions=rope_positions, impl=impl, kv_sharding=kv_sharding)
    return pad_logit_rows(logits, logits_indices.shape[1]), pages


def step_logits(
    graphdef: nnx.GraphDef,
    state: nnx.State,
    kv_pages: tuple[KVPages, ...],
    input_ids: Int[Array, "R T"],
    metadata: AttentionMetadata,
    logits_indices: Int[Array, "R B"],
    embeddings: Float[Array, "R U W"] | None = None,
    embedding_slots: Int[Array, "R T"] | None = None,
    *,
    rope_positions: Int[Array, "R P T"] | None = None,
    impl: str = "auto",
    kv_sharding: jax.sharding.NamedSharding | None = None,
) -> tuple[Float[Array, "R S V"], tuple[KVPages, ...]]:
    """``paged_step``'s work, unjitted, with only the rows that can be real: ``S = min(T, B)``.

    A step of ``T`` tokens holds at most ``T`` sequences, so only the first ``S`` of each replica's
    ``logits_indices`` reach the LM head (a 1-token decode step multiplies 1 row, not ``B``), and
    what follows (the greedy tokens, the sampler's padding) costs what those rows cost.
    """
    model = nnx.merge(graphdef, state)
    on_cpu_kernels = kv_sharding is None and impl in ("auto", "cpu") and jax.default_backend() == "cpu"
    with few_row_products_on_cpu() if on_cpu_kernels else contextlib.nullcontext():
        embeds, extras = model.embed_text(input_ids), {}
        if embeddings is not None:
            embeds, extras = model.merge_embeddings(embeds, embeddings, embedding_slots)
        attend = PagedAttend(metadata, impl=impl, mesh=getattr(kv_sharding, "mesh", None))
        hidden, pages = model.decoder_hidden_states(embeds, metadata.positions, attend, kv_pages, rope_positions,
                                                    **extras)
        if kv_sharding is not None:
            pages = jax.lax.with_sharding_constraint(pages, kv_sharding)
        num_replicas, num_tokens = input_ids.shape
        num_rows = logits_indices.shape[1]
        real = min(num_tokens, num_rows)
        rows = jnp.take_along_axis(hidden, logits_indices[:, :real, None], axis=1)  # [R, real, D]
        logits = model.logits(rows.reshape(-1, rows.shape[-1])).reshape(num_replicas, real, -1)
    return logits, pages


def pad_logit_rows(logits: Float[Array, "R S V"], rows: int) -> Float[Array, "R*B V"]:
    """Each replica's ``S`` rows padded with zeros to ``rows`` (``B``), flattened: ``paged_step``'s layout."""
    return jnp.pad(logits, ((0, 0), (0, rows - logits.shape[1]), (0, 0))).reshape(-1, logits.shape[-1])


@functools.lru_cache(maxsize=8)
def step_program(graphdef: nnx.GraphDef, state_def: Any, *, impl: str,
                 kv_sharding: jax.sharding.NamedSharding | None, batch_invariant: bool = False) -> Callable[..., Any]:
    """``paged_step`` for one model, jitted with the backend's ``compiler_options`` and kept traced on disk
    (``mmjax.engine.program_store``: a new process loads it rather than tracing the model again).

    Call it as ``program(state_leaves, kv_pages, input_ids, metadata, logits_indices[, embeddings,
    embedding_slots][, rope_positions=...], greedy=...)``, ``state_leaves`` being ``jax.tree.flatten(state)[0]`` for
    ``state_def``; ``kv_pages`` are donated. Returns ``(logits [R * S, V], greedy tokens [R * B],
    new kv_pages)``, ``S = min(T, B)`` rows per replica (``pad_logit_rows`` gives ``paged_step``'s
    ``[R * B, V]``): each row's greedy token (``first_argmax``, as the sampler's) is computed in the
    step, so a step whose requests are all plain greedy needs no sampler call; ``greedy=False``
    (a step returning every token's logits) returns an empty ``[0]`` instead. One program per model
    and settings (cached), so memory planning and the runner lower the same one. ``batch_invariant``: the
    model is traced inside ``batch_invariant_numerics()`` (``mmjax.batch_invariant``).
    """
    def run(state_leaves, kv_pages, input_ids, metadata, logits_indices, *embeddings, greedy: bool = True,
            **extras):
        state = jax.tree.unflatten(state_def, state_leaves)
        with batch_invariant_numerics() if batch_invariant else contextlib.nullcontext():
            logits, pages = step_logits(graphdef, state, kv_pages, input_ids, metadata, logits_indices, *embeddings,
                                        impl=impl, kv_sharding=kv_sharding, **extras)
        num_replicas, real, vocab = logits.shape
        tokens = jnp.zeros((0,), jnp.int32)
        if greedy:  # on the real rows; the padding rows' tokens are 0
            tokens = first_argmax(logits.reshape(-1, vocab)).reshape(num_replicas, real)
            tokens = jnp.pad(tokens, ((0, 0), (0, logits_indices.shape[1] - real))).reshape(-1)
        return logits.reshape(-1, vocab), tokens, pages

    graph = graph_identity(graphdef)
    identity = (f"step_program\n{graph}\n{state_def}\nimpl={impl}\nkv_sharding={kv_sharding!r}"
                f"\nbatch_invariant={batch_invariant}")
    return StoredProgram(run, identity=identity, donate_argnums=(1,), static_argnames=("greedy",),
                         compiler_options=compiler_options(), storable=graph is not None)


@functools.lru_cache(maxsize=16)
def encoder_program(graphdef: nnx.GraphDef, state_def: Any, arena_sharding: jax.sharding.Sharding | None,
                    batched: bool = False, batch_invariant: bool = False) -> Callable[..., Any]:
    """``encode_into_arena`` for one model: ``program(state_leaves, arena, mm_kwargs, rows)``, arena donated;
    stored traced as ``step_program`` is. On one CPU device (unbatched: the kernel call is not vmapped) the
    vision tower's attention runs on the CPU kernel (``native_attention_on_cpu``). ``batch_invariant``: traced
    inside ``batch_invariant_numerics()`` with XLA's vision attention, as ``mmjax.score`` encodes an example."""
    native = arena_sharding is None and not batched and not batch_invariant and jax.default_backend() == "cpu"

    def run(state_leaves, arena, mm_kwargs, rows):
        state = jax.tree.unflatten(state_def, state_leaves)
        with contextlib.ExitStack() as stack:
            if native:
                stack.enter_context(native_attention_on_cpu())
            if batch_invariant:
                stack.enter_context(batch_invariant_numerics())
            return encode_into_arena.__wrapped__(graphdef, state, arena, mm_kwargs, rows,
                                                 arena_sharding=arena_sharding, batched=batched)

    graph = graph_identity(graphdef)
    identity = (f"encoder_program\n{graph}\n{state_def}\narena_sharding={arena_sharding!r}\nbatched={batched}"
                f"\nbatch_invariant={batch_invariant}")
    return StoredProgram(run, identity=identity, donate_argnums=(1,), compiler_options=compiler_options(),
                         storable=graph is not None)
