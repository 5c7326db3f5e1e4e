"""Qwen3-VL: a vision tower with DeepStack mergers -> a Qwen3 decoder with interleaved M-RoPE.

Mirrors transformers' ``Qwen3VLForConditionalGeneration`` (images and videos).
The vision tower runs on a request's items packed into a bucket of patch rows with
a host-computed layout (``vision_layout``), so it compiles once per bucket. The
decoder turns each token by three positions (temporal, height, width; interleaved
frequencies), which ``get_mrope_input_positions`` computes per prompt on the host,
RMS-normalises each query and key head, and adds each placeholder token's
DeepStack features to its hidden state after each of its first ``n`` layers
(``n = Qwen3VLConfig.num_deepstack``, one per ``deepstack_visual_indexes`` entry).

The placeholder-row contract (what the engine's embedding arena will hold):
``multimodal_embeddings(**mm_kwargs)`` returns ``[M, (1 + n) * D]``, one row per
placeholder token, its images' then its videos' (each in prompt order; rows past
them are the buckets' padding); a row is ``concat(embedding, deepstack_0, ..., deepstack_{n-1})``,
each ``[D]``, ``deepstack_k`` being what decoder layer ``k`` adds
(``embedding_rows.merge_rows`` splits it). A forward that gathers rows from an arena
passes ``rows [R, U, (1 + n) * D]`` and the per-token row index (``embedding_slots``,
``-1``: a text token) to ``merge_rows`` and the decoder's ``deepstack=``; the dense
``__call__`` does the same with the request's frame rows (no text rows) and ``placeholder_rows``.
A video's placeholders run from its first frame's vision start to its last vision end
(``video_hooks``): its rows at the timestamp and vision start/end tokens between are those
tokens' own embeddings with zero DeepStack features (``embedding_rows.with_text_rows``),
what transformers gives those tokens.
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
from mmjax.models.common.placeholders import concat_real_rows
from mmjax.models.qwen3_vl import hooks
from mmjax.models.qwen3_vl.config import Qwen3VLConfig
from mmjax.models.qwen3_vl.embedding_rows import PADDING_ROW, merge_rows, placeholder_rows, with_text_rows
from mmjax.models.qwen3_vl.vision import Qwen3VisionModel
from mmjax.models.qwen3_vl.vision_layout import VisionLayout
from mmjax.registry import (
    INPUT_REGISTRY, MULTIMODAL_REGISTRY, DecoderOnlyInputs, InputContext, SupportsMRoPE, SupportsMultiModal,
)  # fmt: skip
from mmjax.types import Array, Float, Int

#: The layout fields of a packed tower call (``vision_layout.VisionLayout``); a prompt's videos carry them
#: prefixed ``video_`` beside ``pixel_values_videos`` and ``video_text_ids`` (``hooks.INPUT_KEYS``).
LAYOUT_FIELDS = ("rotary_ids", "frame_segments", "valid", "pos_indices", "pos_weights")


@MULTIMODAL_REGISTRY.register_image_input_mapper(hooks.map_images)
@MULTIMODAL_REGISTRY.register_input_mapper("video", hooks.map_videos)
@MULTIMODAL_REGISTRY.register_max_multimodal_tokens("video", hooks.max_video_tokens)
@MULTIMODAL_REGISTRY.register_max_image_tokens(hooks.max_image_tokens)
@INPUT_REGISTRY.register_dummy_data(hooks.dummy_data)
@INPUT_REGISTRY.register_input_processor(hooks.input_processor)
class Qwen3VLForConditionalGeneration(DecoderMethods, nnx.Module, SupportsMultiModal, SupportsMRoPE):
    """Qwen3-VL: ``(input_ids, positions, rope_positions, packed patches + layout) -> logits``."""

    def __init__(self, cfg: Qwen3VLConfig, *, param_dtype: jnp.dtype = jnp.float32, rngs: nnx.Rngs):
        self.config = cfg
        self.visual = Qwen3VisionModel(cfg.vision, param_dtype=param_dtype, rngs=rngs)
        self.language_model = LlamaForCausalLM(cfg.text, param_dtype=param_dtype, rngs=rngs)

    @staticmethod
    def encoder_input_variants(ctx: InputContext, mm_registry=None) -> list:
        """One zero input per patch bucket: every shape the tower is called with (``mm_registry`` unused)."""
        return hooks.encoder_input_variants(ctx)

    @classmethod
    def get_mrope_input_positions(cls, ctx: InputContext, inputs: DecoderOnlyInputs) -> tuple[np.ndarray, int]:
        """The prompt's ``[3, L]`` M-RoPE positions and the offset of every later token."""
        return hooks.mrope_input_positions(ctx, inputs)

    def _tower_rows(self, inputs: dict[str, Array], pixels_key: str,
                    prefix: str) -> tuple[Float[Array, "merged row_width"], Int[Array, ""]]:
        """One modality's items through the tower: its rows (padding: zeros) and how many are real."""
        layout = VisionLayout(**{name: inputs[prefix + name] for name in LAYOUT_FIELDS})
        pixels = inputs[pixels_key].astype(self.visual.patch_embed.proj.kernel.dtype)
        merged, deepstack = self.visual(pixels, layout)
        return jnp.concatenate([merged, *deepstack], axis=-1), jnp.sum(layout.valid) // self.config.merge_size**2

    def _item_rows(self, inputs: dict[str, Array], video_text: bool) -> Float[Array, "M row_width"]:
        """The images' real rows, then the videos' (their whole runs if ``video_text``, else frame rows only)."""
        parts = []
        if "pixel_values" in inputs:
            parts.append(self._tower_rows(inputs, "pixel_values", ""))
        if "pixel_values_videos" in inputs:
            frames, count = self._tower_rows(inputs, "pixel_values_videos", "video_")
            if video_text:
                text_ids = inputs["video_text_ids"]
                embeds = self.language_model.embed(jnp.maximum(text_ids, 0))
                frames, count = with_text_rows(frames, text_ids, embeds), jnp.sum(text_ids != PADDING_ROW)
            parts.append((frames, count))
        return concat_real_rows(parts)

    def multimodal_embeddings(self, **inputs: Array) -> Float[Array, "M row_width"]:
        """Each placeholder token's row ``concat(embedding, deepstack_0, ..., deepstack_{n-1})``, ``(1 + n) * D``:
        the images', then the videos' whole runs (``embedding_rows.with_text_rows``); the buckets' padding after.

        ``inputs``: what the mappers return (``pixel_values`` and the layout fields for the images,
        ``pixel_values_videos``, the ``video_``-prefixed fields and ``video_text_ids`` for the videos).
        """
        return self._item_rows(inputs, video_text=True)

    @property
    def embedding_width(self) -> int:
        """A placeholder row holds the embedding and one feature per DeepStack layer: ``(1 + n) * D``."""
        return (1 + self.config.num_deepstack) * self.config.text.hidden_size

    def merge_embeddings(self, embeds, arena, slots):
        """Each placeholder token takes its row's embedding; the rows' DeepStack features go to the decoder."""
        embeds, deepstack = merge_rows(embeds, arena, slots)
        return embeds, {"deepstack": deepstack}

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
        embeds, deepstack = self.language_model.embed(input_ids), None
        if vision_inputs:
            # the frame rows only: each token finds its row by its id, images' first (text keeps its own)
            rows = self._item_rows(vision_inputs, video_text=False)
            ids = (self.config.image_token_id, self.config.video_token_id)
            embeds, deepstack = merge_rows(embeds, rows[None], placeholder_rows(input_ids, ids, rows.shape[0]))
        hidden, _ = self.language_model.hidden_states(embeds, positions, attend, rope_positions=rope_positions,
                                                      deepstack=deepstack)
        return self.language_model.logits(hidden)


@functools.partial(jax.jit, static_argnums=0)
def forward(
    graphdef: nnx.GraphDef, state: nnx.State, input_ids: Int[Array, "B T"], positions: Int[Array, "B T"],
    rope_positions: Int[Array, "B 3 T"] | None = None, **vision_inputs: Array,
) -> Float[Array, "B T V"]:
    """The pure, jitted forward: ``graphdef, state = nnx.split(model)`` once, then call this."""
    return nnx.merge(graphdef, state)(input_ids, positions, rope_positions=rope_positions, **vision_inputs)
