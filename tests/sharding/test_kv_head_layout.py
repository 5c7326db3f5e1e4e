"""One rule for where KV heads live on the model axis, and the partition rules follow it."""

from __future__ import annotations

import pytest
from jax.sharding import PartitionSpec as P

from mmjax.models.llava.sharding import COLUMN, LLAVA_PARTITION_RULES, REPLICATED, partition_rules_for
from mmjax.sharding import kv_head_layout, spec_for

K_PROJ = ("language_model", "layers", 0, "self_attn", "k_proj", "kernel")


@pytest.mark.parametrize("num_kv_heads, model_axis, split, per_device", [
    (8, 1, True, 8), (8, 4, True, 2), (8, 8, True, 1), (4, 8, False, 4), (1, 16, False, 1), (2, 4, False, 2),
])
def test_split_or_replicated_and_the_heads_one_device_holds(num_kv_heads, model_axis, split, per_device):
    layout = kv_head_layout(num_kv_heads, model_axis)
    assert layout.split is split
    assert layout.heads_per_device == per_device
    assert layout.kv_pages_spec == (P("model", "data") if split else P(None, "data"))
    assert spec_for(K_PROJ, partition_rules_for(LLAVA_PARTITION_RULES, num_kv_heads, model_axis)) == \
        (COLUMN if split else REPLICATED)


@pytest.mark.parametrize("num_kv_heads, model_axis, message", [
    (6, 4, r"does not divide the KV heads \(num_kv_heads\): 6 % 4 = 2"),
    (3, 4, r"the KV heads \(num_kv_heads = 3\) do not divide the mesh's 'model' axis \(4 devices\)"),
])
def test_head_counts_that_fit_neither_way_are_refused(num_kv_heads, model_axis, message):
    with pytest.raises(ValueError, match=message):
        kv_head_layout(num_kv_heads, model_axis)
