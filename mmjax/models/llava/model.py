"""LLaVA-1.5: CLIP vision tower -> 2-layer projector -> merged into a Llama decoder.

Mirrors transformers' ``LlavaForConditionalGeneration``. Image features are
written into the token embeddings at the ``<image>`` placeholder positions by
``merge_image_features``, which has no data-dependent shapes, so the whole
forward compiles once per (batch, length, image count) bucket.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from mmjax.models.common.attend import Attend
from mmjax.models.common.clip import CLIPVisionTower
from mmjax.models.common.layers import ACTIVATIONS
from mmjax.models.common.decoder import LlamaForCausalLM
from mmjax.models.common.linear import Linear
from mmjax.models.llava.config import LlavaConfig
from mmjax.models.common.interface import DecoderMethods, encoder_inputs_from_dummy_data
from mmjax.models.llava.hooks import dummy_data_for_llava, image_token_count, input_processor_for_llava
from mmjax.registry import INPUT_REGISTRY, MULTIMODAL_REGISTRY, SupportsMultiModal
from mmjax.types import Array, ArrayLike, Float, Int, shape_checked

class LlavaMultiModalProjector(nnx.Module):
    """``linear_2(act(linear_1(features)))``: vision width (x layers) -> text width."""

    def __init__(self, cfg: LlavaConfig, *, param_dtype: jnp.dtype, rngs: nnx.Rngs):
        d_in = cfg.vision.hidden_size * len(cfg.feature_layers)
        d_out = cfg.text.hidden_size
        lin = functools.partial(Linear, use_bias=cfg.projector_bias, param_dtype=param_dtype, rngs=rngs)
        self.linear_1, self.linear_2 = lin(d_in, d_out), lin(d_out, d_out)
        self.act = ACTIVATIONS[cfg.projector_hidden_act]

    def __call__(self, x: Float[Array, "I P E"]) -> Float[Array, "I P D"]:
        return self.linear_2(self.act(self.linear_1(x)))


@shape_checked
def merge_image_features(
    input_ids: Int[ArrayLike, "B T"],
    inputs_embeds: Float[Array, "B T D"],
    image_features: Float[Array, "M D"],
    image_token_index: int,
) -> Float[Array, "B T D"]:
    """Write image features, in order, at the ``<image>`` positions.

    The k-th placeholder in row-major (batch, then token) order receives
    feature row k, as ``masked_scatter`` does in transformers. The index comes
    from a cumulative sum over the placeholder mask, so shapes never depend on
    the data and the function is ``jit``-safe. The caller guarantees that the
    number of placeholders equals ``M`` (see ``check_placeholder_count``).
    """
    is_image = input_ids == image_token_index
    index = jnp.cumsum(is_image.reshape(-1)) - 1
    index = jnp.clip(index, 0, image_features.shape[0] - 1)  # non-image rows read a dummy row
    gathered = jnp.take(image_features, index, axis=0).reshape(inputs_embeds.shape)
    return jnp.where(is_image[..., None], gathered.astype(inputs_embeds.dtype), inputs_embeds)


def check_placeholder_count(input_ids: Int[Array, "B T"], num_features: int, image_token_index: int) -> None:
    """Raise if concrete ``input_ids`` hold a different number of placeholders than features."""
    if isinstance(input_ids, jax.core.Tracer):
        return  # inside jit the count is data; the input processor guarantees it
    count = int((input_ids == image_token_index).sum())
    if count != num_features:
        raise ValueError(
            f"Image features and image tokens do not match: tokens: {count}, features: {num_features}"
        )


@MULTIMODAL_REGISTRY.register_image_input_mapper()
@MULTIMODAL_REGISTRY.register_max_image_tokens(image_token_count)
@INPUT_REGISTRY.register_dummy_data(dummy_data_for_llava)
@INPUT_REGISTRY.register_input_processor(input_processor_for_llava)
class LlavaForConditionalGeneration(DecoderMethods, nnx.Module, SupportsMultiModal):
    """LLaVA-1.5: ``(input_ids, positions, pixel_values | image_embeds) -> logits``.

    Serves the engine through ``mmjax.models.common.interface.EngineModel``.
    """

    #: Every image has the tower's size: the dummy data's images, 1 to the limit of them, cover every shape.
    encoder_input_variants = staticmethod(encoder_inputs_from_dummy_data)

    def __init__(self, cfg: LlavaConfig, *, param_dtype: jnp.dtype = jnp.float32, rngs: nnx.Rngs):
        self.config = cfg
        self.vision_tower = CLIPVisionTower(cfg.vision, param_dtype=param_dtype, rngs=rngs)
        self.multi_modal_projector = LlavaMultiModalProjector(cfg, param_dtype=param_dtype, rngs=rngs)
        self.language_model = LlamaForCausalLM(cfg.text, param_dtype=param_dtype, rngs=rngs)

    def image_features(self, pixel_values: Float[Array, "I C Y X"]) -> Float[Array, "I P D"]:
        """Projected features of each image; ``P = image_tokens_per_image``."""
        layers = self.config.feature_layers
        states = self.vision_tower(pixel_values, num_layers=max(layers))
        selected = [states[i] for i in layers]
        if self.config.vision_feature_select_strategy == "default":
            selected = [s[:, 1:] for s in selected]  # drop CLS
        return self.multi_modal_projector(jnp.concatenate(selected, axis=-1))

    def multimodal_embeddings(
        self, pixel_values: Float[Array, "I C Y X"] | None = None, image_embeds: Float[Array, "I P D"] | None = None
    ) -> Float[Array, "M D"]:
        """The embedding of every placeholder token of these images, in placeholder order.

        The engine computes this once per request and feeds the rows to the
        prefill chunks that hold the placeholders (``M = I * P``).
        """
        features = self.image_features(pixel_values) if image_embeds is None else jnp.asarray(image_embeds)
        return features.reshape(-1, features.shape[-1])

    def embed(
        self,
        input_ids: Int[Array, "B T"],
        pixel_values: Float[Array, "I C Y X"] | None = None,
        image_embeds: Float[Array, "I P D"] | None = None,
    ) -> Float[Array, "B T D"]:
        """Token embeddings with image features merged in at the placeholders.

        ``image_embeds`` are precomputed, projected features (what ``image_features``
        returns); give them instead of ``pixel_values`` to skip the vision tower.
        """
        embeds = self.language_model.embed(input_ids)
        if pixel_values is not None and image_embeds is not None:
            raise ValueError("give pixel_values or image_embeds, not both")
        if pixel_values is None and image_embeds is None:
            return embeds
        features = self.multimodal_embeddings(pixel_values, image_embeds)
        check_placeholder_count(input_ids, features.shape[0], self.config.image_token_index)
        return merge_image_features(input_ids, embeds, features, self.config.image_token_index)

    def __call__(
        self,
        input_ids: Int[Array, "B T"],
        positions: Int[Array, "B T"],
        pixel_values: Float[Array, "I C Y X"] | None = None,
        attend: Attend | None = None,
        image_embeds: Float[Array, "I P D"] | None = None,
    ) -> Float[Array, "B T V"]:
        """Float32 logits for every position.

        Args:
          input_ids: prompt tokens; each image is expanded to
            ``config.image_tokens_per_image`` ``<image>`` tokens.
          positions: absolute positions (``-1`` for padding).
          pixel_values: the images of the whole batch, in placeholder order.
          attend: attention implementation (default: dense causal).
          image_embeds: precomputed image features, instead of ``pixel_values``.
        """
        return self.language_model(self.embed(input_ids, pixel_values, image_embeds), positions, attend)


@functools.partial(jax.jit, static_argnums=0)
def forward(
    graphdef: nnx.GraphDef,
    state: nnx.State,
    input_ids: Int[Array, "B T"],
    positions: Int[Array, "B T"],
    pixel_values: Float[Array, "I C Y X"] | None = None,
    image_embeds: Float[Array, "I P D"] | None = None,
) -> Float[Array, "B T V"]:
    """The pure, jitted forward: ``graphdef, state = nnx.split(model)`` once, then call this."""
    model = nnx.merge(graphdef, state)
    return model(input_ids, positions, pixel_values, image_embeds=image_embeds)
