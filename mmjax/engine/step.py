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


def _per_device(mesh, kv_pages: tuple[KVPages, ...]) -> bool:
    """On a mesh, attention runs per device (shard_map) when the KV heads split evenly."""
    if mesh is None:
        return False
    from mmjax.sharding.attention import shardable

    return shardable(mesh, kv_pages[0].num_kv_heads)


@functools.partial(jax.jit, static_argnums=0)
def encode_multimodal(graphdef: nnx.GraphDef, state: nnx.State, mm_kwargs: Mapping[str, Array]) -> Float[Array, "M D"]:
    """The embeddings of a request's placeholder tokens, in placeholder order (vision tower + projector)."""
    return nnx.merge(graphdef, state).multimodal_embeddings(**mm_kwargs)


@functools.partial(jax.jit, static_argnames=("graphdef", "impl", "kv_sharding"), donate_argnames=("kv_pages",))
def paged_step(
    graphdef: nnx.GraphDef,
    state: nnx.State,
    kv_pages: tuple[KVPages, ...],
    input_ids: Int[Array, "T"],
    metadata: AttentionMetadata,
    logits_indices: Int[Array, "S"],
    mm_embeds: Float[Array, "T D"] | None = None,
    mm_mask: Bool[Array, "T"] | None = None,
    *,
    impl: str = "auto",
    kv_sharding: jax.sharding.Sharding | None = None,
) -> tuple[Float[Array, "S V"], tuple[KVPages, ...]]:
    """One engine step.

    Args:
      kv_pages: one ``KVPages`` per decoder layer (donated).
      input_ids: the step's packed query tokens (padding: any id, slot -1).
      metadata: block tables, lengths, slots and positions of the packed tokens.
      logits_indices: rows of ``input_ids`` whose logits are returned.
      mm_embeds, mm_mask: for tokens where ``mm_mask`` is set, the embedding to
        use instead of the token's (an image placeholder); both or neither.
      kv_sharding: on a mesh, where the pages live (``mmjax.sharding.kv_pages_sharding``):
        the new pages are pinned there, so they stay split over KV heads, the
        donated buffers are reused and the next step sees the same sharding.

    Returns:
      ``(logits f32[S, V], new kv_pages)``.
    """
    model = nnx.merge(graphdef, state)
    mesh = getattr(kv_sharding, "mesh", None)
    attend = PagedAttend(kv_pages, metadata, impl=impl, mesh=mesh if _per_device(mesh, kv_pages) else None)
    embeds = model.language_model.embed(input_ids[None])
    if mm_embeds is not None:
        embeds = jnp.where(mm_mask[None, :, None], mm_embeds[None].astype(embeds.dtype), embeds)
    hidden = model.language_model.hidden_states(embeds, metadata.positions[None], attend)[0]
    pages = tuple(attend.pages)
    if kv_sharding is not None:
        pages = jax.lax.with_sharding_constraint(pages, kv_sharding)
    return model.language_model.logits(hidden[logits_indices]), pages
