"""LLaVA-NeXT: anyres tiles -> CLIP tower -> projector -> unpadded grid + newlines -> Llama/Mistral.

Mirrors transformers' ``LlavaNextForConditionalGeneration``. transformers
reshapes, unpads and concatenates each image's features with data-dependent
shapes; here the host precomputes, from the geometry alone, which feature row
fills each placeholder (``mmjax.processing.anyres_layout``), so the device
runs the tower on a bucket of real tiles and then gathers: the forward
compiles once per (tile bucket, batch, length) and never per image size.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mmjax.models.common.attend import Attend
from mmjax.models.common.clip import CLIPVisionTower
from mmjax.models.common.decoder import LlamaForCausalLM
from mmjax.models.common.interface import DecoderMethods
from mmjax.models.llava.model import LlavaMultiModalProjector
from mmjax.models.llava.config import LlavaConfig
from mmjax.models.llava_next.hooks import (
    dummy_data_for_llava_next, encoder_input_variants, input_processor_for_llava_next, map_images_for_llava_next,
    max_image_tokens,
)  # fmt: skip
from mmjax.processing.anyres import AnyresGeometry
from mmjax.processing.anyres_layout import NEWLINE, TEXT, AnyresImages
from mmjax.registry import INPUT_REGISTRY, MULTIMODAL_REGISTRY, SupportsMultiModal
from mmjax.types import Array, ArrayLike, Bool, Float, Int, shape_checked


@dataclasses.dataclass(frozen=True, kw_only=True)
class LlavaNextConfig:
    """A validated, hashable view of a transformers ``LlavaNextConfig``.

    Attributes:
      llava: the tower, projector and decoder fields, which LLaVA-1.5 shares.
      geometry: pinpoints, tile and patch size: the anyres token count.
    """

    llava: LlavaConfig
    geometry: AnyresGeometry

    @classmethod
    def from_hf(cls, hf) -> "LlavaNextConfig":
        """Build from a transformers ``LlavaNextConfig``; raise naming any unsupported field."""
        # With the CLS feature a tile has p*p+1 features, which cannot be laid out as a grid.
        llava = LlavaConfig.from_hf(hf, model_type="llava_next", strategies=("default",))
        return cls(llava=llava, geometry=AnyresGeometry.from_hf(hf))


@shape_checked
def merge_anyres_features(
    input_ids: Int[ArrayLike, "B T"],
    inputs_embeds: Float[Array, "B T D"],
    tile_features: Float[Array, "feature_rows D"],
    image_newline: Float[Array, "D"],
    placeholder_rows: Int[ArrayLike, "M"],
    image_token_index: int,
) -> Float[Array, "B T D"]:
    """Fill the k-th placeholder from ``placeholder_rows[k]``: a tile feature or the newline.

    ``tile_features`` are the tiles' features flattened (``feature_rows = I * P``), the
    table ``placeholder_rows`` indexes. ``input_ids`` and ``placeholder_rows`` may be
    host arrays, as the model's caller gave them.

    ``k`` counts placeholders in row-major (batch, then token) order, as
    transformers' ``masked_scatter`` does; it comes from a cumulative sum, so
    no shape depends on the data and the function is ``jit``-safe.
    """
    is_image = input_ids == image_token_index
    k = jnp.clip(jnp.cumsum(is_image.reshape(-1)) - 1, 0, placeholder_rows.shape[0] - 1)
    rows = jnp.where(is_image, placeholder_rows[k].reshape(is_image.shape), TEXT)
    gathered = jnp.take(tile_features, jnp.maximum(rows, 0), axis=0).astype(inputs_embeds.dtype)
    out = jnp.where((rows >= 0)[..., None], gathered, inputs_embeds)
    return jnp.where((rows == NEWLINE)[..., None], image_newline.astype(inputs_embeds.dtype), out)


def check_placeholder_count(input_ids: Int[Array, "B T"], placeholder_rows: Int[Array, "M"], image_token_index: int):
    """Raise if concrete ``input_ids`` hold another number of placeholders than the images fill."""
    if isinstance(input_ids, jax.core.Tracer) or isinstance(placeholder_rows, jax.core.Tracer):
        return  # inside jit the counts are data; the input processor guarantees them
    tokens = int((np.asarray(input_ids) == image_token_index).sum())
    features = int((np.asarray(placeholder_rows) != TEXT).sum())
    if tokens != features:
        raise ValueError(f"Image features and image tokens do not match: tokens: {tokens}, features: {features}")


@MULTIMODAL_REGISTRY.register_image_input_mapper(map_images_for_llava_next)
@MULTIMODAL_REGISTRY.register_max_image_tokens(max_image_tokens)
@INPUT_REGISTRY.register_dummy_data(dummy_data_for_llava_next)
@INPUT_REGISTRY.register_input_processor(input_processor_for_llava_next)
class LlavaNextForConditionalGeneration(DecoderMethods, nnx.Module, SupportsMultiModal):
    """LLaVA-NeXT: ``(input_ids, positions, packed tiles, placeholder map) -> logits``.

    Serves the engine through ``mmjax.models.common.interface.EngineModel``.
    """

    @staticmethod
    def encoder_input_variants(ctx, mm_registry=None) -> list:
        """Every encoder input shape, for ``LLMEngine.warmup``: one per tile bucket (``mm_registry`` unused:
        the anyres mapper's shapes follow from the geometry)."""
        return encoder_input_variants(ctx)

    def __init__(self, cfg: LlavaNextConfig, *, param_dtype: jnp.dtype = jnp.float32, rngs: nnx.Rngs):
        self.config = cfg
        self.vision_tower = CLIPVisionTower(cfg.llava.vision, param_dtype=param_dtype, rngs=rngs)
        self.multi_modal_projector = LlavaMultiModalProjector(cfg.llava, param_dtype=param_dtype, rngs=rngs)
        self.language_model = LlamaForCausalLM(cfg.llava.text, param_dtype=param_dtype, rngs=rngs)
        self.image_newline = nnx.Param(jnp.zeros((cfg.llava.text.hidden_size,), dtype=param_dtype))

    def tile_features(self, tiles: Float[Array, "I C Y X"], tile_valid: Bool[Array, "I"]) -> Float[Array, "I P D"]:
        """Projected features of each tile, CLS dropped (``P = geometry.base_tokens``).

        The tower runs on exactly the tiles given, which ``pack_images`` made the
        real tiles plus bucket padding. Padding tiles' features are zeroed so
        that nothing they compute can reach a placeholder.
        """
        layers = self.config.llava.feature_layers
        states = self.vision_tower(tiles, num_layers=max(layers))
        features = self.multi_modal_projector(jnp.concatenate([states[i][:, 1:] for i in layers], axis=-1))
        return jnp.where(tile_valid[:, None, None], features, 0)

    def multimodal_embeddings(
        self,
        pixel_values: Float[Array, "I C Y X"],
        tile_valid: Bool[Array, "I"],
        placeholder_rows: Int[Array, "M"],
    ) -> Float[Array, "M D"]:
        """The embedding of every placeholder token, in placeholder order (rows past the last: padding).

        The engine computes this once per request and feeds the rows to the
        prefill chunks that hold the placeholders.
        """
        features = self.tile_features(pixel_values, tile_valid)
        features = features.reshape(-1, features.shape[-1])
        gathered = jnp.take(features, jnp.maximum(placeholder_rows, 0), axis=0)
        newline = self.image_newline[...].astype(gathered.dtype)
        return jnp.where((placeholder_rows == NEWLINE)[:, None], newline, gathered)

    def embed(
        self,
        input_ids: Int[Array, "B T"],
        pixel_values: Float[Array, "I C Y X"] | None = None,
        tile_valid: Bool[Array, "I"] | None = None,
        placeholder_rows: Int[Array, "M"] | None = None,
    ) -> Float[Array, "B T D"]:
        """Token embeddings with tile features and newlines merged in at the placeholders."""
        embeds = self.language_model.embed(input_ids)
        if pixel_values is None:
            return embeds
        if tile_valid is None or placeholder_rows is None:
            raise ValueError("pixel_values need tile_valid and placeholder_rows (see anyres_layout.pack_images)")
        image_token = self.config.llava.image_token_index
        check_placeholder_count(input_ids, placeholder_rows, image_token)
        features = self.tile_features(pixel_values, tile_valid)
        features = features.reshape(-1, features.shape[-1])
        newline = self.image_newline[...]
        return merge_anyres_features(input_ids, embeds, features, newline, placeholder_rows, image_token)

    def __call__(
        self,
        input_ids: Int[Array, "B T"],
        positions: Int[Array, "B T"],
        pixel_values: Float[Array, "I C Y X"] | None = None,
        attend: Attend | None = None,
        *,
        tile_valid: Bool[Array, "I"] | None = None,
        placeholder_rows: Int[Array, "M"] | None = None,
    ) -> Float[Array, "B T V"]:
        """Float32 logits for every position.

        Args:
          input_ids: prompt tokens; each image expanded to
            ``geometry.num_image_tokens(height, width)`` ``<image>`` tokens.
          positions: absolute positions (``-1`` for padding).
          pixel_values, tile_valid, placeholder_rows: the step's images, the
            fields of ``anyres_layout.AnyresImages`` (what the image mapper returns).
          attend: attention implementation (default: dense causal).
        """
        embeds = self.embed(input_ids, pixel_values, tile_valid, placeholder_rows)
        return self.language_model(embeds, positions, attend)


@functools.partial(jax.jit, static_argnums=0)
def forward(
    graphdef: nnx.GraphDef,
    state: nnx.State,
    input_ids: Int[Array, "B T"],
    positions: Int[Array, "B T"],
    images: AnyresImages | None = None,
) -> Float[Array, "B T V"]:
    """The pure, jitted forward: ``graphdef, state = nnx.split(model)`` once, then call this."""
    model = nnx.merge(graphdef, state)
    if images is None:
        return model(input_ids, positions)
    return model(input_ids, positions, images.pixel_values, tile_valid=images.tile_valid,
                 placeholder_rows=images.placeholder_rows)
