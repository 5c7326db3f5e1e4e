"""Where the Llama-family decoder's weights live on a ``("data", "model")`` mesh (Megatron style over "model").

On our layouts (an ``nnx.Linear`` kernel is ``[in, out]``):

- attention: q/k/v column-split (their outputs are heads, so each device holds
  whole heads), o row-split (its inputs are heads); one all-reduce after o;
- MLP: gate/up column-split, down row-split; one all-reduce after down;
- vocabulary: the embedding ``[V, D]`` and the LM head ``[D, V]`` split over V;
- a bias follows its layer's output axis (split for q/k/v/gate/up, replicated
  for o/down, which add it after the all-reduce), and so do an int8 layer's
  per-output-column scales (``kernel_scale``, applied before the all-reduce
  for o/down: a scale per output column commutes with the sum); norms replicated.

With fewer KV heads than devices on "model" the k/v projections are replicated
(``decoder_partition_rules``; ``mmjax.sharding.kv_head_layout`` says why).
"""

from __future__ import annotations

from jax.sharding import PartitionSpec as P

from mmjax.sharding.axes import MODEL
from mmjax.sharding.kv_heads import kv_head_layout

COLUMN = P(None, MODEL)  # split the output axis of an [in, out] kernel
ROW = P(MODEL, None)  # split the input axis
SPLIT = P(MODEL)  # the bias of a column-split layer
REPLICATED = P()

_LM = r"^language_model/"
#: The k and v projections of every layer (replicated when the KV heads cannot be split).
KV_PROJECTIONS = _LM + r"layers/\d+/self_attn/[kv]_proj/"

#: ``(regex on the "/"-joined parameter path, spec)``; the first match wins.
DECODER_PARTITION_RULES: tuple[tuple[str, P], ...] = (
    (_LM + r"embed_tokens/embedding$", ROW),  # [V, D]
    (_LM + r"lm_head/kernel$", COLUMN),
    (_LM + r"lm_head/kernel_scale$", SPLIT),  # [V]: an int8 head's scales, split as its outputs  # [D, V]
    (_LM + r"layers/\d+/self_attn/[qkv]_proj/kernel$", COLUMN),
    (_LM + r"layers/\d+/self_attn/[qkv]_proj/(bias|kernel_scale)$", SPLIT),
    (_LM + r"layers/\d+/self_attn/o_proj/kernel$", ROW),
    (_LM + r"layers/\d+/self_attn/o_proj/(bias|kernel_scale)$", REPLICATED),
    (_LM + r"layers/\d+/mlp/(gate|up)_proj/kernel$", COLUMN),
    (_LM + r"layers/\d+/mlp/(gate|up)_proj/(bias|kernel_scale)$", SPLIT),
    (_LM + r"layers/\d+/mlp/down_proj/kernel$", ROW),
    (_LM + r"layers/\d+/mlp/down_proj/(bias|kernel_scale)$", REPLICATED),
    (_LM + r"(layers/\d+/(input|post_attention|pre_feedforward|post_feedforward)_layernorm|norm)/weight$", REPLICATED),
    (_LM + r"layers/\d+/self_attn/[qk]_norm/weight$", REPLICATED),  # per-head norms ([head_dim]): Qwen3
)


def decoder_partition_rules(num_kv_heads: int, model_axis: int) -> tuple[tuple[str, P], ...]:
    """``DECODER_PARTITION_RULES`` for a model axis of ``model_axis`` devices (k/v replicated when
    the KV heads cannot be split over it)."""
    if kv_head_layout(num_kv_heads, model_axis).split:
        return DECODER_PARTITION_RULES
    return ((KV_PROJECTIONS, REPLICATED),) + DECODER_PARTITION_RULES
