"""Where each LLaVA weight lives on a ``("data", "model")`` mesh: one table, also used by LLaVA-NeXT.

Tensor parallelism (Megatron style) over ``"model"``, on our layouts (an
``nnx.Linear`` kernel is ``[in, out]``):

- attention: q/k/v column-split (their outputs are heads, so each device holds
  whole heads), o row-split (its inputs are heads); one all-reduce after o;
- MLP: gate/up column-split, down row-split; one all-reduce after down;
- vocabulary: the embedding ``[V, D]`` and the LM head ``[D, V]`` split over V;
- a bias follows its layer's output axis (split for q/k/v/gate/up, replicated
  for o/down, which add it after the all-reduce);
- norms, the vision tower, the projector and ``image_newline``: replicated.
  CLIP-L/336 is 0.3 B parameters (0.6 GB in bf16), under 2 % of a 16 GB TPU
  core's HBM; it runs once per image, and replicated it needs no collective,
  so every data replica encodes its own requests' images independently.

KV heads: when there are fewer KV heads than devices on ``"model"``
(``num_kv_heads % model != 0``, e.g. 8 KV heads on 16 devices, or GQA models
with 1-2 KV heads), the k/v projections are replicated: every device computes
all KV heads, and the partitioner slices the ones its query heads need.
``mmjax.sharding.check_divisible`` has already refused a model axis that does
not divide the heads, the MLP width or the vocabulary.
"""

from __future__ import annotations

from jax.sharding import PartitionSpec as P

from mmjax.sharding.mesh import MODEL

COLUMN = P(None, MODEL)  # split the output axis of an [in, out] kernel
ROW = P(MODEL, None)  # split the input axis
SPLIT = P(MODEL)  # the bias of a column-split layer
REPLICATED = P()

_LM = r"^language_model/"
_KV = _LM + r"layers/\d+/self_attn/[kv]_proj/"

#: ``(regex on the "/"-joined parameter path, spec)``; the first match wins, and
#: every parameter must match one (``mmjax.sharding.partition_specs`` raises).
LLAVA_PARTITION_RULES: tuple[tuple[str, P], ...] = (
    (r"^vision_tower/", REPLICATED),
    (r"^multi_modal_projector/", REPLICATED),
    (_LM + r"embed_tokens/embedding$", ROW),  # [V, D]
    (_LM + r"lm_head/kernel$", COLUMN),  # [D, V]
    (_LM + r"layers/\d+/self_attn/[qkv]_proj/kernel$", COLUMN),
    (_LM + r"layers/\d+/self_attn/[qkv]_proj/bias$", SPLIT),
    (_LM + r"layers/\d+/self_attn/o_proj/kernel$", ROW),
    (_LM + r"layers/\d+/self_attn/o_proj/bias$", REPLICATED),
    (_LM + r"layers/\d+/mlp/(gate|up)_proj/kernel$", COLUMN),
    (_LM + r"layers/\d+/mlp/(gate|up)_proj/bias$", SPLIT),
    (_LM + r"layers/\d+/mlp/down_proj/kernel$", ROW),
    (_LM + r"layers/\d+/mlp/down_proj/bias$", REPLICATED),
    (_LM + r"(layers/\d+/(input|post_attention)_layernorm|norm)/weight$", REPLICATED),
)

#: LLaVA-NeXT adds one parameter.
LLAVA_NEXT_PARTITION_RULES = LLAVA_PARTITION_RULES + ((r"^image_newline$", REPLICATED),)


def partition_rules_for(rules: tuple[tuple[str, P], ...], num_kv_heads: int, model_axis: int):
    """``rules`` for a mesh whose model axis has ``model_axis`` devices: k/v replicated
    when the KV heads cannot be split over it."""
    if num_kv_heads % model_axis == 0:
        return rules
    return ((_KV, REPLICATED),) + rules


def llava_shardings(mesh, text_config, model_paths, rules=LLAVA_PARTITION_RULES):
    """``(mesh, {parameter path: NamedSharding})`` for a LLaVA decoder config on ``mesh``.

    ``mesh`` is anything ``mmjax.sharding.make_mesh`` takes; the model axis is
    checked against the decoder's dimensions first (an error names the one it
    does not divide).
    """
    from mmjax.sharding import ShardedDims, make_mesh, named_shardings, partition_specs

    mesh = make_mesh(mesh, dims=ShardedDims.of(text_config))
    rules = partition_rules_for(rules, text_config.num_kv_heads, mesh.shape[MODEL])
    return mesh, named_shardings(mesh, partition_specs(model_paths, rules))
