"""Where each LLaVA weight lives on a ``("data", "model")`` mesh: one table, also used by LLaVA-NeXT.

Tensor parallelism (Megatron style) over ``"model"``, on our layouts (an
``nnx.Linear`` kernel is ``[in, out]``):

- attention: q/k/v column-split (their outputs are heads, so each device holds
  whole heads), o row-split (its inputs are heads); one all-reduce after o;
- MLP: gate/up column-split, down row-split; one all-reduce after down;
- vocabulary: the embedding ``[V, D]`` and the LM head ``[D, V]`` split over V;
- a bias follows its layer's output axis (split for q/k/v/gate/up, replicated
  for o/down, which add it after the all-reduce);
- the vision tower: the same Megatron split of its attention heads and MLP
  when the model axis divides both (``VISION_TENSOR_PARALLEL_RULES``), so the model devices of
  a replica share an image's encoding; else replicated (CLIP-L's 16 heads on a
  32-device model axis). Its embeddings and layer norms are replicated;
- norms, the projector and ``image_newline``: replicated (the projector is
  small, and splitting it would tie the text width to the model axis).

KV heads lie as ``mmjax.sharding.kv_head_layout`` says: when there are fewer
KV heads than devices on ``"model"`` (e.g. 8 KV heads on 16 devices, or GQA
models with 1-2 KV heads), the k/v projections are replicated: every device
computes all KV heads, and the partitioner slices the ones its query heads need.
``mmjax.sharding.check_divisible`` has already refused a model axis that does
not divide the heads, the MLP width or the vocabulary.
"""

from __future__ import annotations

from jax.sharding import PartitionSpec as P

from mmjax.models.common.decoder_sharding import (  # noqa: F401 (the specs, re-exported for the rules' readers)
    COLUMN, DECODER_PARTITION_RULES, KV_PROJECTIONS, REPLICATED, ROW, SPLIT,
)
from mmjax.sharding.kv_heads import kv_head_layout

_VISION = r"^vision_tower/layers/\d+/"

#: The vision tower's tensor-parallel split (the rest of the tower stays replicated).
VISION_TENSOR_PARALLEL_RULES: tuple[tuple[str, P], ...] = (
    (_VISION + r"self_attn/[qkv]_proj/kernel$", COLUMN),
    (_VISION + r"self_attn/[qkv]_proj/bias$", SPLIT),
    (_VISION + r"self_attn/out_proj/kernel$", ROW),
    (_VISION + r"mlp/fc1/kernel$", COLUMN),
    (_VISION + r"mlp/fc1/bias$", SPLIT),
    (_VISION + r"mlp/fc2/kernel$", ROW),
)

#: ``(regex on the "/"-joined parameter path, spec)``; the first match wins, and
#: every parameter must match one (``mmjax.sharding.partition_specs`` raises).
LLAVA_PARTITION_RULES: tuple[tuple[str, P], ...] = (
    (r"^vision_tower/", REPLICATED),
    (r"^multi_modal_projector/", REPLICATED),
) + DECODER_PARTITION_RULES

#: LLaVA-NeXT adds one parameter.
LLAVA_NEXT_PARTITION_RULES = LLAVA_PARTITION_RULES + ((r"^image_newline$", REPLICATED),)


def partition_rules_for(rules: tuple[tuple[str, P], ...], num_kv_heads: int, model_axis: int,
                        vision_config=None):
    """``rules`` for a mesh whose model axis has ``model_axis`` devices: k/v replicated
    when the KV heads cannot be split over it; the vision tower split when
    ``vision_config``'s heads and MLP width divide by it (``vision_tensor_parallel``)."""
    if not kv_head_layout(num_kv_heads, model_axis).split:
        rules = ((KV_PROJECTIONS, REPLICATED),) + rules
    if vision_config is not None and vision_tensor_parallel(vision_config, model_axis):
        rules = VISION_TENSOR_PARALLEL_RULES + rules
    return rules


def vision_tensor_parallel(vision_config, model_axis: int) -> bool:
    """Whether the vision tower is split over a model axis of ``model_axis`` devices."""
    return (model_axis > 1 and vision_config.num_heads % model_axis == 0
            and vision_config.intermediate_size % model_axis == 0)

