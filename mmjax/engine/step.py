"""The jitted device functions of the engine: encode a request's images, run one paged step.

Tokens of all scheduled sequences are packed along one axis; ``AttentionMetadata``
says which belong to whom and where their K/V go. Multimodal placeholders get
their embeddings from ``mm_embeds`` (token-aligned, computed once per request by
``encode_multimodal``), so a prefill chunk may end in the middle of an image.
Only the rows named by ``logits_indices`` reach the LM head. The KV pages are
donated, so XLA updates them in place.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from mmjax.kv_cache.metadata import AttentionMetadata
from mmjax.kv_cache.paged_attend import PagedAttend
from mmjax.kv_cache.pages import KVPages
from mmjax.types import Array, Bool, Float, Int


def check_paged_support(model: nnx.Module) -> None:
    """Raise for a decoder feature the paged kernels do not implement."""
    window = getattr(model.language_model.config, "sliding_window", None)
    if window is not None:
        raise NotImplementedError(
            f"the paged KV cache does not implement sliding-window attention (sliding_window={window}); "
            f"run such a model with llm.logits (dense attention)"
        )


@functools.partial(jax.jit, static_argnums=0)
def encode_multimodal(graphdef: nnx.GraphDef, state: nnx.State, mm_kwargs: Mapping[str, Array]) -> Float[Array, "M D"]:
    """The embeddings of a request's placeholder tokens, in placeholder order (vision tower + projector)."""
    return nnx.merge(graphdef, state).multimodal_embeddings(**mm_kwargs)


@functools.partial(jax.jit, static_argnames=("graphdef", "impl", "kv_sharding"), donate_argnames=("kv_pages",))
def paged_step(
    graphdef: nnx.GraphDef,
    state: nnx.State,
    kv_pages: tuple[KVPages, ...],
    input_ids: Int[Array, "R T"],
    metadata: AttentionMetadata,
    logits_indices: Int[Array, "R S"],
    mm_embeds: Float[Array, "R T D"] | None = None,
    mm_mask: Bool[Array, "R T"] | None = None,
    *,
    impl: str = "auto",
    kv_sharding: jax.sharding.NamedSharding | None = None,
) -> tuple[Float[Array, "RS V"], tuple[KVPages, ...]]:
    """One engine step over ``R`` data replicas (``R`` = the mesh's "data" axis, 1 on one device).

    Args:
      kv_pages: one ``KVPages`` per decoder layer (donated); on a mesh, the page
        axis is split over "data" (replica ``r`` owns the ``r``-th slice) and the
        KV heads over "model".
      input_ids: each replica's packed query tokens (padding: any id, slot -1).
      metadata: block tables, lengths, slots and positions of the packed tokens,
        each field with a leading ``R``; page ids are local to the replica's slice.
      logits_indices: rows of each replica's ``input_ids`` whose logits are returned.
      mm_embeds, mm_mask: for tokens where ``mm_mask`` is set, the embedding to
        use instead of the token's (an image placeholder); both or neither.
      kv_sharding: on a mesh, where the pages live (``mmjax.sharding.kv_pages_sharding``):
        attention runs per device (``shard_map``) and the new pages are pinned
        there, so the donated buffers are reused and the next step sees the same sharding.

    Returns:
      ``(logits f32[R * S, V], new kv_pages)``: replica ``r``'s rows are ``r * S:(r + 1) * S``.
    """
    model = nnx.merge(graphdef, state)
    mesh = getattr(kv_sharding, "mesh", None)
    attend = PagedAttend(kv_pages, metadata, impl=impl, mesh=mesh)
    embeds = model.language_model.embed(input_ids)
    if mm_embeds is not None:
        embeds = jnp.where(mm_mask[:, :, None], mm_embeds.astype(embeds.dtype), embeds)
    hidden = model.language_model.hidden_states(embeds, metadata.positions, attend)
    rows = jnp.take_along_axis(hidden, logits_indices[:, :, None], axis=1)
    pages = tuple(attend.pages)
    if kv_sharding is not None:
        pages = jax.lax.with_sharding_constraint(pages, kv_sharding)
    return model.language_model.logits(rows.reshape(-1, rows.shape[-1])), pages
