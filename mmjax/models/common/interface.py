"""The contract between a model family and the engine's device runner.

The runner (``mmjax.engine.runner``) calls a model through ``EngineModel`` and
nothing else. A new model family implements these members (the porting guide,
docs/adding_a_multimodal_model.md, walks through them); a decoder that is a
``LlamaForCausalLM`` under ``self.language_model`` gets the four decoder
members from ``DecoderMethods``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import jax
import jax.numpy as jnp
import numpy as np

from mmjax.models.common.attend import Attend
from mmjax.models.common.decoder_config import DecoderConfig
from mmjax.registry import INPUT_REGISTRY, InputContext, InputRegistry, MultiModalRegistry
from mmjax.types import Array, Float, Int

if TYPE_CHECKING:
    from mmjax.kv_cache import KVPages


@runtime_checkable
class EngineModel(Protocol):
    """What the engine needs of a model: the decoder in pieces, and the multimodal encoder.

    ``R`` is the leading replica axis of a step (1 on one device), ``T`` its
    packed tokens, ``M`` the placeholder embeddings of a request's items.
    """

    @property
    def text_config(self) -> DecoderConfig:
        """The decoder's sizes: layers, heads, KV heads, head dim, width, vocabulary, sliding window."""
        ...

    def embed_text(self, input_ids: Int[Array, "R T"]) -> Float[Array, "R T D"]:
        """Token embeddings, before any multimodal embedding is put in."""
        ...

    @property
    def embedding_width(self) -> int:
        """The width of one row of ``multimodal_embeddings`` (the engine's arena rows)."""
        ...

    def merge_embeddings(
        self, embeds: Float[Array, "R T D"], arena: Float[Array, "R U W"], slots: Int[Array, "R T"],
    ) -> tuple[Float[Array, "R T D"], dict[str, Any]]:
        """The token embeddings with each placeholder's row put in (``slots``: its arena row, -1 for text),
        and the decoder's extra inputs those rows carry (keywords of ``decoder_hidden_states``)."""
        ...

    def decoder_hidden_states(
        self, embeds: Float[Array, "R T D"], positions: Int[Array, "R T"], attend: Attend,
        kv_pages: Sequence[KVPages], rope_positions: Int[Array, "R P T"] | None = None, **extras: Any,
    ) -> tuple[Float[Array, "R T D"], tuple[KVPages, ...]]:
        """The decoder layers and final norm over ``attend``; returns the hidden states and new pages.

        ``positions`` say where each token's K/V go; ``rope_positions``, when the family's rotary
        embedding reads ``P > 1`` positions per token (``text_config.rope_position_axes``), its angles;
        ``extras``: what ``merge_embeddings`` returned (Qwen3-VL's DeepStack features).
        """
        ...

    def logits(self, hidden: Float[Array, "*B D"]) -> Float[Array, "*B V"]:
        """The LM head in float32, applied only to the rows whose logits are wanted."""
        ...

    def multimodal_embeddings(self, **mm_kwargs: Array) -> Float[Array, "M D"]:
        """The embedding of each placeholder token of a request's items, in placeholder order.

        ``mm_kwargs`` is the request's mapped input (``ProcessedPrompt.mm_kwargs``).
        Rows past the request's placeholder count are padding (bucketed shapes).
        """
        ...

    @staticmethod
    def encoder_input_variants(ctx: InputContext, mm_registry: MultiModalRegistry) -> list[Mapping[str, np.ndarray]]:
        """Every ``mm_kwargs`` shape a workload can bring, for warm-up (one zero input per shape)."""
        ...


class DecoderMethods:
    """``EngineModel``'s decoder members for a model whose decoder is ``self.language_model``."""

    language_model: Any  # a LlamaForCausalLM
    #: A token whose runs in a prompt attend to each other in both directions (an image's soft tokens, Gemma 3);
    #: None: every token is causal. The engine's attention metadata and scheduler read it.
    bidirectional_token_id: int | None = None

    @property
    def text_config(self) -> DecoderConfig:
        return self.language_model.config

    def embed_text(self, input_ids: Int[Array, "R T"]) -> Float[Array, "R T D"]:
        return self.language_model.embed(input_ids)

    @property
    def embedding_width(self) -> int:
        """One placeholder row is one token embedding."""
        return self.text_config.hidden_size

    def merge_embeddings(self, embeds, arena, slots):
        """Each placeholder token takes its arena row; no extra decoder inputs."""
        gathered = jax.vmap(lambda rows, index: rows[index])(arena, jnp.maximum(slots, 0))
        return jnp.where((slots >= 0)[:, :, None], gathered.astype(embeds.dtype), embeds), {}

    def decoder_hidden_states(self, embeds, positions, attend, kv_pages, rope_positions=None, **extras):
        return self.language_model.hidden_states(embeds, positions, attend, kv_pages, rope_positions, **extras)

    def logits(self, hidden: Float[Array, "*B D"]) -> Float[Array, "*B V"]:
        return self.language_model.logits(hidden)


def encoder_inputs_from_dummy_data(
    ctx: InputContext, mm_registry: MultiModalRegistry, input_registry: InputRegistry = INPUT_REGISTRY
) -> list[Mapping[str, np.ndarray]]:
    """One dummy item of each modality mapped alone: every encoder input shape of a model whose mapper
    gives each item the same shape (the engine maps and encodes each item alone)."""
    dummy = input_registry.dummy_data_for_profiling(ctx.model_config, seq_len=1)
    inputs = []
    for key, items in dummy.multi_modal_data.items():
        items = items if isinstance(items, list) else [items]
        inputs += [mm_registry.map_item(ctx.model_config, key, items[0])] if items else []
    return inputs
