"""The LLaVA / LLaVA-NeXT partition tables cover every parameter, and place each as intended."""

from __future__ import annotations

import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from mmjax.models.llava.config import LlavaConfig
from mmjax.models.llava_next import LlavaNextConfig
from mmjax.models.llava_next import LLAVA_NEXT
from mmjax.models.llava.sharding import (
    COLUMN,
    LLAVA_NEXT_PARTITION_RULES,
    LLAVA_PARTITION_RULES,
    REPLICATED,
    ROW,
    SPLIT,
    partition_rules_for,
)  # fmt: skip
from mmjax.models.llava import LLAVA
from mmjax.sharding import partition_specs, spec_for
from mmjax.testing.checkpoints import make_tiny_llava_checkpoint
from mmjax.testing.next_checkpoints import make_tiny_llava_next_checkpoint


def _paths(model) -> list[tuple]:
    return [path for path, _ in nnx.to_flat_state(nnx.state(model, nnx.Param))]


@pytest.fixture(scope="module")
def llava_paths(tmp_path_factory):
    from mmjax.registry.config import load_hf_config as read_hf_config

    path = make_tiny_llava_checkpoint(tmp_path_factory.mktemp("rules"), text_config={
        "attention_bias": True, "mlp_bias": True})
    return _paths(LLAVA.abstract_model(LlavaConfig.from_hf(read_hf_config(path))))


@pytest.fixture(scope="module")
def next_paths(tmp_path_factory):
    from mmjax.registry.config import load_hf_config as read_hf_config

    path = make_tiny_llava_next_checkpoint(tmp_path_factory.mktemp("next_rules"))
    return _paths(LLAVA_NEXT.abstract_model(LlavaNextConfig.from_hf(read_hf_config(path))))


def test_every_llava_parameter_has_exactly_the_intended_spec(llava_paths):
    specs = {"/".join(map(str, p)): s for p, s in partition_specs(llava_paths, LLAVA_PARTITION_RULES).items()}
    expected = {
        "language_model/embed_tokens/embedding": ROW, "language_model/lm_head/kernel": COLUMN,
        "language_model/layers/1/self_attn/q_proj/kernel": COLUMN,
        "language_model/layers/1/self_attn/q_proj/bias": SPLIT,
        "language_model/layers/1/self_attn/k_proj/kernel": COLUMN,
        "language_model/layers/1/self_attn/v_proj/bias": SPLIT,
        "language_model/layers/1/self_attn/o_proj/kernel": ROW,
        "language_model/layers/1/self_attn/o_proj/bias": REPLICATED,
        "language_model/layers/0/mlp/gate_proj/kernel": COLUMN, "language_model/layers/0/mlp/up_proj/bias": SPLIT,
        "language_model/layers/0/mlp/down_proj/kernel": ROW, "language_model/layers/0/mlp/down_proj/bias": REPLICATED,
        "language_model/layers/0/post_attention_layernorm/weight": REPLICATED,
        "language_model/norm/weight": REPLICATED,
    }
    for name, spec in expected.items():
        assert specs[name] == spec, name
    for name, spec in specs.items():
        if not name.startswith("language_model/"):
            assert spec == REPLICATED, name


def test_the_next_table_covers_image_newline(next_paths):
    specs = partition_specs(next_paths, LLAVA_NEXT_PARTITION_RULES)
    assert specs[("image_newline",)] == P()
    with pytest.raises(KeyError, match="no partition rule matches parameter 'image_newline'"):
        partition_specs(next_paths, LLAVA_PARTITION_RULES)


def test_kv_projections_are_replicated_when_the_kv_heads_cannot_be_split():
    k = ("language_model", "layers", 3, "self_attn", "k_proj", "kernel")
    q = ("language_model", "layers", 3, "self_attn", "q_proj", "kernel")
    assert spec_for(k, partition_rules_for(LLAVA_PARTITION_RULES, num_kv_heads=8, model_axis=4)) == COLUMN
    assert spec_for(k, partition_rules_for(LLAVA_PARTITION_RULES, num_kv_heads=2, model_axis=4)) == REPLICATED
    assert spec_for(q, partition_rules_for(LLAVA_PARTITION_RULES, num_kv_heads=2, model_axis=4)) == COLUMN


def test_the_vision_tower_is_split_when_the_model_axis_divides_its_heads_and_mlp(llava_paths):
    from mmjax.models.common.clip import CLIPVisionConfig

    clip_l = CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_layers=24, num_heads=16,
                              image_size=336, patch_size=14)
    split = {"/".join(map(str, p)): s for p, s in partition_specs(
        llava_paths, partition_rules_for(LLAVA_PARTITION_RULES, 8, 8, clip_l)).items()}
    expected = {  # Megatron: q/k/v and fc1 by output (whole heads), out_proj and fc2 by input
        "vision_tower/layers/0/self_attn/q_proj/kernel": COLUMN, "vision_tower/layers/0/self_attn/v_proj/bias": SPLIT,
        "vision_tower/layers/0/self_attn/out_proj/kernel": ROW,
        "vision_tower/layers/0/self_attn/out_proj/bias": REPLICATED,
        "vision_tower/layers/0/mlp/fc1/kernel": COLUMN, "vision_tower/layers/0/mlp/fc1/bias": SPLIT,
        "vision_tower/layers/0/mlp/fc2/kernel": ROW, "vision_tower/layers/0/mlp/fc2/bias": REPLICATED,
        "vision_tower/layers/0/layer_norm1/scale": REPLICATED,
        "vision_tower/embeddings/patch_embedding/kernel": REPLICATED,
        "multi_modal_projector/linear_1/kernel": REPLICATED,
    }
    for name, spec in expected.items():
        assert split[name] == spec, name
    # 16 heads cannot be split over 32 devices: the whole tower is replicated.
    wide = partition_specs(llava_paths, partition_rules_for(LLAVA_PARTITION_RULES, 32, 32, clip_l))
    assert all(spec == REPLICATED for path, spec in wide.items() if path[0] == "vision_tower")


def test_read_slice_reads_a_block_in_our_layout(tmp_path):
    import numpy as np
    from safetensors.numpy import save_file

    from mmjax.models.common.weights import CheckpointReader

    hf = np.arange(6 * 10, dtype=np.float32).reshape(6, 10)  # torch Linear: [out, in]
    save_file({"lin.weight": hf}, str(tmp_path / "model.safetensors"))
    with CheckpointReader(tmp_path) as reader:
        block = reader.read_slice("lin.weight", (slice(2, 7), slice(3, 6)), (1, 0))  # ours: [in, out]
    np.testing.assert_array_equal(block, hf.T[2:7, 3:6])


def test_read_sharded_reads_each_distinct_block_once():
    import jax
    import numpy as np
    from jax.sharding import NamedSharding

    from mmjax.sharding import make_mesh, read_sharded

    mesh = make_mesh({"data": 1, "model": 1})
    calls = []
    full = np.arange(12.0).reshape(3, 4)

    def read(index):
        calls.append(index)
        return full[index]

    array = read_sharded((3, 4), NamedSharding(mesh, P(None, "model")), read)
    np.testing.assert_array_equal(jax.device_get(array), full)
    assert len(calls) == 1
