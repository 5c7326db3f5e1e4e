"""Gemma 3: SigLIP tower -> average-pooled, RMS-normed projection -> the Gemma 3 decoder.

Mirrors transformers' ``Gemma3ForConditionalGeneration``. An image is one tower call at the tower's
resolution (896 for the released sizes), its patches average-pooled to ``mm_tokens_per_image`` (256)
soft tokens, each normalised (``mm_soft_emb_norm``) and projected to the decoder's width. The soft tokens
of one image attend to each other in both directions, text stays causal (``bidirectional_key_ends``):
the engine builds the same mask from the prompt's runs of soft tokens (``bidirectional_token_id``).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from mmjax.models.common.attend import Attend, bidirectional_key_ends, dense_attend
from mmjax.models.common.interface import DecoderMethods
from mmjax.models.common.siglip import SiglipVisionTower
from mmjax.models.gemma3 import hooks
from mmjax.models.gemma3.config import Gemma3Config, Gemma3TextConfig
from mmjax.models.gemma3.decoder import Gemma3TextModel, GemmaRMSNorm
from mmjax.registry import INPUT_REGISTRY, MULTIMODAL_REGISTRY, InputContext, SupportsMultiModal
from mmjax.types import Array, Bool, Float, Int


class Gemma3MultiModalProjector(nnx.Module):
    """``[I, P, E]`` patches -> ``[I, tokens, D]``: average pool on the patch grid, RMSNorm, one matmul."""

    def __init__(self, cfg: Gemma3Config, *, param_dtype: jnp.dtype, rngs: nnx.Rngs):
        self.config = cfg
        width, out = cfg.vision.hidden_size, cfg.text.hidden_size
        self.mm_input_projection_weight = nnx.Param(jnp.zeros((width, out), dtype=param_dtype))
        self.mm_soft_emb_norm = GemmaRMSNorm(width, eps=cfg.vision.layer_norm_eps, param_dtype=param_dtype,
                                             rngs=rngs)

    def __call__(self, patches: Float[Array, "I P E"]) -> Float[Array, "I tokens D"]:
        cfg = self.config
        side, pool, width = cfg.tokens_per_side, cfg.pool, patches.shape[-1]
        grid = patches.reshape(patches.shape[0], side, pool, side, pool, width)  # row-major patch grid
        pooled = jnp.mean(grid.astype(jnp.float32), axis=(2, 4)).astype(patches.dtype)
        normed = self.mm_soft_emb_norm(pooled.reshape(patches.shape[0], side * side, width))
        return jnp.matmul(normed, self.mm_input_projection_weight[...]).astype(patches.dtype)


@MULTIMODAL_REGISTRY.register_image_input_mapper(hooks.map_images)
@MULTIMODAL_REGISTRY.register_max_image_tokens(hooks.max_image_tokens)
@INPUT_REGISTRY.register_dummy_data(hooks.dummy_data)
@INPUT_REGISTRY.register_input_processor(hooks.input_processor)
class Gemma3ForConditionalGeneration(DecoderMethods, nnx.Module, SupportsMultiModal):
    """Gemma 3 with images: ``(input_ids, positions, pixel_values) -> logits``; the engine's ``EngineModel``.

    An image's placeholder range (``hooks``) is its ``1 + crops`` sequences of ``<start_of_image>``, soft
    tokens and ``<end_of_image>`` with pan and scan's text between them: ``multimodal_embeddings`` gives one
    row per range token, the tower's next soft-token row at a soft token and the token's own embedding at
    the others, so a request's rows fill its ranges as the engine expects.
    """

    def __init__(self, cfg: Gemma3Config, *, param_dtype: jnp.dtype = jnp.float32, rngs: nnx.Rngs):
        self.config = cfg
        self.vision_tower = SiglipVisionTower(cfg.vision, param_dtype=param_dtype, rngs=rngs)
        self.multi_modal_projector = Gemma3MultiModalProjector(cfg, param_dtype=param_dtype, rngs=rngs)
        self.language_model = Gemma3TextModel(cfg.text, param_dtype=param_dtype, rngs=rngs)

    @staticmethod
    def encoder_input_variants(ctx: InputContext, mm_registry=None) -> list:
        """One zero input per crop count an image may have: every shape the tower is called with."""
        return hooks.encoder_input_variants(ctx)

    @property
    def bidirectional_token_id(self) -> int:
        """Runs of this token (an image's soft tokens) attend to each other in both directions."""
        return self.config.image_token_index

    def image_features(self, pixel_values: Float[Array, "I C S S"]) -> Float[Array, "I tokens D"]:
        """Each image's soft-token embeddings (``tokens = mm_tokens_per_image``)."""
        dtype = self.multi_modal_projector.mm_input_projection_weight[...].dtype
        return self.multi_modal_projector(self.vision_tower(pixel_values.astype(dtype)))

    def multimodal_embeddings(
        self, pixel_values: Float[Array, "I C S S"], range_token_ids: Int[Array, "L"],
        soft_token_mask: Bool[Array, "L"], num_crops: Int[Array, "N"] | None = None,
    ) -> Float[Array, "L D"]:
        """One row per token of the images' placeholder ranges (``L``): at a soft token the next of the images'
        soft-token embeddings (``I = sum(1 + crops)`` tower images, in order), elsewhere the token's own.
        ``num_crops`` (the mapper's) is not needed: the soft tokens follow the images in order."""
        del num_crops
        features = self.image_features(pixel_values)
        features = features.reshape(-1, features.shape[-1])
        text = self.language_model.embed(jnp.where(soft_token_mask, 0, range_token_ids))
        index = jnp.clip(jnp.cumsum(soft_token_mask) - 1, 0, features.shape[0] - 1)
        return jnp.where(soft_token_mask[:, None], features[index].astype(text.dtype), text)

    def embed(self, input_ids: Int[Array, "B T"], pixel_values: Float[Array, "I C S S"] | None = None
              ) -> Float[Array, "B T D"]:
        """Token embeddings with the images' soft-token embeddings put in at the soft tokens, in order."""
        embeds = self.language_model.embed(input_ids)
        if pixel_values is None:
            return embeds
        features = self.image_features(pixel_values)
        features = features.reshape(-1, features.shape[-1])
        is_image = input_ids == self.config.image_token_index
        index = jnp.clip(jnp.cumsum(is_image.reshape(-1)) - 1, 0, features.shape[0] - 1).reshape(is_image.shape)
        return jnp.where(is_image[..., None], features[index].astype(embeds.dtype), embeds)

    def __call__(
        self,
        input_ids: Int[Array, "B T"],
        positions: Int[Array, "B T"],
        pixel_values: Float[Array, "I C S S"] | None = None,
        attend: Attend | None = None,
        **range_inputs: Array,
    ) -> Float[Array, "B T V"]:
        """Float32 logits for every position.

        ``range_inputs``: the mapper's other outputs (``num_crops``, ``range_token_ids``, ``soft_token_mask``),
        not needed here: the soft tokens of ``input_ids`` take the images' rows in order. ``attend``
        (default: dense attention with each image's soft tokens bidirectional, the rest causal, each layer's
        window) replaces the attention; ``positions`` are each token's index, ``-1`` padding.
        """
        if attend is None:
            in_image = input_ids == self.config.image_token_index
            attend = dense_attend(key_ends=bidirectional_key_ends(positions, in_image))
        hidden, _ = self.language_model.hidden_states(self.embed(input_ids, pixel_values), positions, attend)
        return self.language_model.logits(hidden)


class Gemma3ForCausalLM(DecoderMethods, nnx.Module):
    """Text-only Gemma 3 (``google/gemma-3-1b-it``): the same decoder, no images."""

    def __init__(self, cfg: Gemma3TextConfig, *, param_dtype: jnp.dtype = jnp.float32, rngs: nnx.Rngs):
        self.config = cfg
        self.language_model = Gemma3TextModel(cfg, param_dtype=param_dtype, rngs=rngs)

    @staticmethod
    def encoder_input_variants(ctx: InputContext, mm_registry=None) -> list:
        """None: the model takes no images, so nothing is encoded."""
        return []

    def multimodal_embeddings(self, **inputs: Array) -> Float[Array, "M D"]:
        raise ValueError(f"Gemma3ForCausalLM takes text only; got multimodal inputs {sorted(inputs)}")

    def __call__(self, input_ids: Int[Array, "B T"], positions: Int[Array, "B T"],
                 attend: Attend | None = None) -> Float[Array, "B T V"]:
        hidden, _ = self.language_model.hidden_states(self.language_model.embed(input_ids), positions, attend)
        return self.language_model.logits(hidden)


@functools.partial(jax.jit, static_argnums=0)
def forward(graphdef: nnx.GraphDef, state: nnx.State, input_ids: Int[Array, "B T"], positions: Int[Array, "B T"],
            pixel_values: Float[Array, "I C S S"] | None = None) -> Float[Array, "B T V"]:
    """The pure, jitted forward: ``graphdef, state = nnx.split(model)`` once, then call this."""
    model = nnx.merge(graphdef, state)
    if pixel_values is None:
        return model(input_ids, positions)
    return model(input_ids, positions, pixel_values)
