"""The jitted model step over the paged KV cache: prefill, chunked prefill and decode in one.

Tokens of all scheduled sequences are packed along one axis; ``AttentionMetadata``
says which belong to whom and where their K/V go. Only the rows named by
``logits_indices`` (the last token of each sequence, typically) reach the LM
head. The KV pages are donated, so XLA updates them in place.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

import jax
from flax import nnx

from mmjax.kv_cache.metadata import AttentionMetadata
from mmjax.kv_cache.paged_attend import PagedAttend
from mmjax.kv_cache.pages import KVPages
from mmjax.types import Array, Float, Int


def check_paged_support(model: nnx.Module) -> None:
    """Raise for a decoder feature the paged kernels do not implement."""
    window = getattr(model.language_model.config, "sliding_window", None)
    if window is not None:
        raise NotImplementedError(
            f"the paged KV cache does not implement sliding-window attention (sliding_window={window}); "
            f"run such a model with llm.logits (dense attention)"
        )


@functools.partial(jax.jit, static_argnames=("graphdef", "impl"), donate_argnames=("kv_pages",))
def paged_step(
    graphdef: nnx.GraphDef,
    state: nnx.State,
    kv_pages: tuple[KVPages, ...],
    input_ids: Int[Array, "T"],
    metadata: AttentionMetadata,
    logits_indices: Int[Array, "S"],
    mm_kwargs: Mapping[str, Array],
    *,
    impl: str = "auto",
) -> tuple[Float[Array, "S V"], tuple[KVPages, ...]]:
    """One engine step.

    Args:
      kv_pages: one ``KVPages`` per decoder layer (donated).
      input_ids: the step's packed query tokens (padding: any id, slot -1).
      metadata: block tables, lengths, slots and positions of the packed tokens.
      logits_indices: rows of ``input_ids`` whose logits are returned.
      mm_kwargs: the model's multimodal kwargs for the images whose placeholders
        are all in this step (e.g. ``pixel_values``), or ``{}``.

    Returns:
      ``(logits f32[S, V], new kv_pages)``.
    """
    model = nnx.merge(graphdef, state)
    attend = PagedAttend(kv_pages, metadata, impl=impl)
    positions = metadata.positions[None]
    embeds = model.embed(input_ids[None], **mm_kwargs)
    hidden = model.language_model.hidden_states(embeds, positions, attend)[0]
    return model.language_model.logits(hidden[logits_indices]), tuple(attend.pages)
