"""The loader refuses broken checkpoints and unsupported configs, naming the culprit."""

from __future__ import annotations

import json
import os
import re
import shutil

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from mmjax.models.llava_weights import load_llava
from tiny_llava import checkpoint


def _copy(name: str, dst) -> str:
    return shutil.copytree(checkpoint(name), dst)


def _edit_tensors(path: str, edit, file: str = "model.safetensors") -> None:
    tensors = load_file(os.path.join(path, file))
    edit(tensors)
    save_file(tensors, os.path.join(path, file), {"format": "pt"})


def _edit_config(path: str, edit) -> None:
    with open(os.path.join(path, "config.json")) as f:
        config = json.load(f)
    edit(config)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f)


def test_missing_config_is_named(tmp_path):
    path = _copy("gqa_default", tmp_path / "ckpt")
    os.remove(os.path.join(path, "config.json"))
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_llava(path)


def test_missing_weights_file_is_named(tmp_path):
    path = _copy("gqa_default", tmp_path / "ckpt")
    os.remove(os.path.join(path, "model.safetensors"))
    with pytest.raises(FileNotFoundError, match=r"model\.safetensors"):
        load_llava(path)


def test_missing_shard_is_named(tmp_path):
    path = _copy("mha_full_sharded_tied", tmp_path / "ckpt")
    shard = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))[1]
    os.remove(os.path.join(path, shard))
    with pytest.raises(FileNotFoundError, match=re.escape(shard)):
        load_llava(path)


def test_missing_tensor_is_named_with_its_file(tmp_path):
    path = _copy("gqa_default", tmp_path / "ckpt")
    name = "language_model.model.layers.1.mlp.up_proj.weight"
    _edit_tensors(path, lambda t: t.pop(name))
    with pytest.raises(KeyError, match=re.escape(name) + ".*model.safetensors"):
        load_llava(path)


def test_tensor_missing_from_the_shard_its_index_names(tmp_path):
    path = _copy("mha_full_sharded_tied", tmp_path / "ckpt")
    with open(os.path.join(path, "model.safetensors.index.json")) as f:
        weight_map = json.load(f)["weight_map"]
    name, shard = sorted(weight_map.items())[0]
    _edit_tensors(path, lambda t: t.pop(name), file=shard)
    with pytest.raises(KeyError, match=re.escape(name) + ".*" + re.escape(shard)):
        load_llava(path)


def test_wrong_shape_names_tensor_and_both_shapes(tmp_path):
    path = _copy("gqa_default", tmp_path / "ckpt")
    name = "multi_modal_projector.linear_1.weight"  # (text 40, vision 28) in torch layout
    _edit_tensors(path, lambda t: t.update({name: np.zeros((40, 27), np.float32)}))
    with pytest.raises(ValueError, match=re.escape(name) + r".*\(40, 27\).*expected \(40, 28\)"):
        load_llava(path)


def test_unexpected_tensor_is_named(tmp_path):
    path = _copy("gqa_default", tmp_path / "ckpt")
    _edit_tensors(path, lambda t: t.update({"vision_tower.extra_head.weight": np.zeros((3,), np.float32)}))
    with pytest.raises(ValueError, match=r"extra_head\.weight"):
        load_llava(path)


def _set(*keys_and_value):
    *keys, value = keys_and_value

    def edit(config):
        node = config
        for key in keys[:-1]:
            node = node[key]
        node[keys[-1]] = value

    return edit


@pytest.mark.parametrize(
    "edit, message",
    [
        (_set("text_config", "rope_parameters", {"rope_type": "dynamic", "factor": 2.0}), "dynamic"),
        (_set("text_config", "hidden_act", "gelu_fast"), "text_config.hidden_act"),
        (_set("vision_config", "hidden_act", "gelu_fast"), "vision_config.hidden_act"),
        (_set("projector_hidden_act", "gelu_fast"), "projector_hidden_act"),
        (_set("vision_feature_select_strategy", "cls_only"), "vision_feature_select_strategy"),
        (_set("vision_feature_layer", 7), "vision_feature_layer"),
        (_set("text_config", "model_type", "gemma"), "text_config.model_type='gemma'"),
    ],
    ids=["rope_dynamic", "text_act", "vision_act", "projector_act", "strategy", "layer_range", "text_model"],
)
def test_unsupported_config_field_is_named(tmp_path, edit, message):
    path = _copy("gqa_default", tmp_path / "ckpt")
    _edit_config(path, edit)
    with pytest.raises(Exception, match=re.escape(message)):
        load_llava(path)


def test_config_of_another_architecture_is_refused(tmp_path):
    path = _copy("gqa_default", tmp_path / "ckpt")

    def as_llama(config):
        config.clear()
        config.update(model_type="llama", architectures=["LlamaForCausalLM"])

    _edit_config(path, as_llama)
    with pytest.raises(ValueError, match="model_type='llama'.*LlamaForCausalLM"):
        load_llava(path)
