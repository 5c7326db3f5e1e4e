"""Qwen2.5-VL: a windowed-attention vision tower and 2x2 merger -> a Qwen2 decoder with M-RoPE.

Mirrors transformers' ``Qwen2_5_VLForConditionalGeneration``. The vision tower
runs on a request's items packed into a bucket of patch rows with a layout the
host computed (``vision_layout``), so it compiles once per bucket; its merged
rows are the embeddings of the ``<|image_pad|>`` placeholders, in order. The
decoder turns each token by three positions (temporal, height, width), which
``get_mrope_input_positions`` computes per prompt on the host.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mmjax.models.common.attend import Attend
from mmjax.models.common.decoder import LlamaForCausalLM
from mmjax.models.common.interface import DecoderMethods
from mmjax.models.common.placeholders import concat_real_rows, modality_major_rows
from mmjax.models.qwen2_5_vl import hooks
from mmjax.models.qwen2_5_vl.config import Qwen2_5_VLConfig
from mmjax.models.qwen2_5_vl.vision import Qwen2_5_VisionTransformer
from mmjax.models.qwen2_5_vl.vision_layout import WindowedVisionLayout
from mmjax.registry import (
    INPUT_REGISTRY, MULTIMODAL_REGISTRY, DecoderOnlyInputs, InputContext, SupportsMRoPE, SupportsMultiModal,
)  # fmt: skip
from mmjax.types import Array, ArrayLike, Float, Int

#: The layout fields of a packed tower call (``vision_layout.WindowedVisionLayout``); a prompt's videos carry
#: them prefixed ``video_`` beside ``pixel_values_videos`` (``hooks.INPUT_KEYS``).
LAYOUT_FIELDS = ("window_index", "reverse_index", "rotary_ids", "frame_segments", "window_segments", "valid")


def merge_placeholder_embeddings(
    input_ids: Int[ArrayLike, "B T"], inputs_embeds: Float[Array, "B T D"], features: Float[Array, "M D"],
    placeholder_ids: tuple[int, ...],
) -> Float[Array, "B T D"]:
    """Write ``features`` at the tokens whose id is one of ``placeholder_ids``: the first id's tokens take the
    first rows (row-major), the next id's the rows after them (``modality_major_rows``). ``jit``-safe."""
    rows = modality_major_rows(input_ids, placeholder_ids)
    gathered = jnp.take(features, jnp.clip(rows, 0, features.shape[0] - 1), axis=0)
    return jnp.where((rows >= 0)[..., None], gathered.astype(inputs_embeds.dtype), inputs_embeds)


@MULTIMODAL_REGISTRY.register_image_input_mapper(hooks.map_images)
@MULTIMODAL_REGISTRY.register_input_mapper("video", hooks.map_videos)
@MULTIMODAL_REGISTRY.register_max_multimodal_tokens("video", hooks.max_video_tokens)
@MULTIMODAL_REGISTRY.register_max_image_tokens(hooks.max_image_tokens)
@INPUT_REGISTRY.register_dummy_data(hooks.dummy_data)
@INPUT_REGISTRY.register_input_processor(hooks.input_processor)
class Qwen2_5_VLForConditionalGeneration(DecoderMethods, nnx.Module, SupportsMultiModal, SupportsMRoPE):
    """Qwen2.5-VL: ``(input_ids, positions, rope_positions, packed patches + layout) -> logits``.

    Serves the engine through ``mmjax.models.common.interface.EngineModel``.
    """

    def __init__(self, cfg: Qwen2_5_VLConfig, *, param_dtype: jnp.dtype = jnp.float32, rngs: nnx.Rngs):
        self.config = cfg
        self.visual = Qwen2_5_VisionTransformer(cfg.vision, param_dtype=param_dtype, rngs=rngs)
        self.language_model = LlamaForCausalLM(cfg.text, param_dtype=param_dtype, rngs=rngs)

    @staticmethod
    def encoder_input_variants(ctx: InputContext, mm_registry=None) -> list:
        """One zero input per patch bucket: every shape the tower is called with (``mm_registry`` unused)."""
        return hooks.encoder_input_variants(ctx)

    @classmethod
    def get_mrope_input_positions(cls, ctx: InputContext, inputs: DecoderOnlyInputs) -> tuple[np.ndarray, int]:
        """The prompt's ``[3, L]`` M-RoPE positions and the offset of every later token."""
        return hooks.mrope_input_positions(ctx, inputs)

    def multimodal_embeddings(self, **inputs: Array) -> Float[Array, "M D"]:
        """The embedding of every placeholder token of the request's items: its images' rows, then its videos'.

        ``inputs``: what the mappers return (``pixel_values`` and the layout fields for the images,
        ``pixel_values_videos`` and ``video_``-prefixed fields for the videos). Each modality's items run
        through the tower in one call; the real rows of both are packed one after the other, padding last.
        """
        parts = []
        for pixels_key, prefix in (("pixel_values", ""), ("pixel_values_videos", "video_")):
            if pixels_key in inputs:
                layout = WindowedVisionLayout(**{name: inputs[prefix + name] for name in LAYOUT_FIELDS})
                rows = self.visual(inputs[pixels_key].astype(self.visual.patch_embed.proj.kernel.dtype), layout)
                parts.append((rows, jnp.sum(layout.valid) // self.config.merge_size**2))
        return concat_real_rows(parts)

    def embed(self, input_ids: Int[Array, "B T"], **vision_inputs: Array) -> Float[Array, "B T D"]:
        """Token embeddings with the items' embeddings merged in at the placeholders."""
        embeds = self.language_model.embed(input_ids)
        if not vision_inputs:
            return embeds
        features = self.multimodal_embeddings(**vision_inputs)
        ids = (self.config.image_token_id, self.config.video_token_id)
        return merge_placeholder_embeddings(input_ids, embeds, features, ids)

    def __call__(
        self,
        input_ids: Int[Array, "B T"],
        positions: Int[Array, "B T"],
        attend: Attend | None = None,
        *,
        rope_positions: Int[Array, "B 3 T"] | None = None,
        **vision_inputs: Array,
    ) -> Float[Array, "B T V"]:
        """Float32 logits for every position.

        Args:
          positions: each token's index (``-1`` for padding): the causal mask.
          rope_positions: the M-RoPE positions (``ProcessedPrompt.rope_positions``); None: ``positions``
            on all three axes (a text-only prompt).
          vision_inputs: what the mappers return (see ``multimodal_embeddings``), or none.
        """
        if rope_positions is None:
            rope_positions = jnp.broadcast_to(positions[:, None, :], (positions.shape[0], 3, positions.shape[1]))
        embeds = self.embed(input_ids, **vision_inputs)
        return self.language_model(embeds, positions, attend, rope_positions)


@functools.partial(jax.jit, static_argnums=0)
def forward(
    graphdef: nnx.GraphDef, state: nnx.State, input_ids: Int[Array, "B T"], positions: Int[Array, "B T"],
    rope_positions: Int[Array, "B 3 T"] | None = None, **vision_inputs: Array,
) -> Float[Array, "B T V"]:
    """The pure, jitted forward: ``graphdef, state = nnx.split(model)`` once, then call this."""
    return nnx.merge(graphdef, state)(input_ids, positions, rope_positions=rope_positions, **vision_inputs)
