"""The loader refuses broken checkpoints and unsupported configs, naming the culprit.

Each bad checkpoint is a copy of a good tiny one, then corrupted: a truncated
safetensors file, a wrong-shaped tensor, a wrong-typed or unparsable
config.json, missing or broken tokenizer and image-processor files.
"""

from __future__ import annotations

import json
import os
import re
import shutil

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import mmjax
from mmjax.models.llava import load_llava
from tiny_llava import checkpoint


def _copy(name: str, dst) -> str:
    return os.fspath(shutil.copytree(checkpoint(name), dst))


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
    with pytest.raises((NotImplementedError, ValueError), match=re.escape(message)):
        load_llava(path)


def test_config_of_another_architecture_is_refused(tmp_path):
    path = _copy("gqa_default", tmp_path / "ckpt")

    def as_llama(config):
        config.clear()
        config.update(model_type="llama", architectures=["LlamaForCausalLM"])

    _edit_config(path, as_llama)
    with pytest.raises(ValueError, match="model_type='llama'.*LlamaForCausalLM"):
        load_llava(path)


# --- through mmjax.load: every file of the checkpoint, named with what is wrong -------------------


def _truncate(file: str, size: int) -> None:
    with open(file, "r+b") as f:
        f.truncate(size)


def _header_length(file: str) -> int:
    with open(file, "rb") as f:
        return int.from_bytes(f.read(8), "little")


@pytest.mark.parametrize(
    "cut, message",
    [
        (lambda f: os.path.getsize(f) // 2, r"is truncated: its header lists \d+ bytes of tensor data but the file "
                                             r"holds only \d+"),
        (lambda f: 8 + _header_length(f) // 2, r"is truncated inside its header: the header is \d+ bytes"),
        (lambda f: 4, r"is truncated: 4 bytes, less than the 8-byte header length"),
    ],
    ids=["in_data", "in_header", "in_length"],
)
def test_truncated_safetensors_is_named(tmp_path, cut, message):
    path = _copy("gqa_default", tmp_path / "ckpt")
    file = os.path.join(path, "model.safetensors")
    _truncate(file, cut(file))
    with pytest.raises(ValueError, match=re.escape(file) + " " + message):
        mmjax.load(path)


def test_truncated_shard_is_named(tmp_path):
    path = _copy("mha_full_sharded_tied", tmp_path / "ckpt")
    shard = os.path.join(path, sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))[-1])
    _truncate(shard, os.path.getsize(shard) - 1)
    with pytest.raises(ValueError, match=re.escape(shard) + " is truncated"):
        mmjax.load(path)


def test_git_lfs_pointer_instead_of_weights_is_named(tmp_path):
    path = _copy("gqa_default", tmp_path / "ckpt")
    file = os.path.join(path, "model.safetensors")
    with open(file, "w") as f:
        f.write("version https://git-lfs.github.com/spec/v1\noid sha256:0123\nsize 301840\n")
    with pytest.raises(ValueError, match=re.escape(file) + " is not a safetensors file: it looks like a git-lfs"):
        mmjax.load(path)


def test_unreadable_shard_index_is_named(tmp_path):
    path = _copy("mha_full_sharded_tied", tmp_path / "ckpt")
    index = os.path.join(path, "model.safetensors.index.json")
    _truncate(index, 50)
    with pytest.raises(ValueError, match=re.escape(index) + " is not valid JSON"):
        mmjax.load(path)
    with open(index, "w") as f:
        json.dump({"metadata": {}}, f)
    with pytest.raises(ValueError, match=re.escape(index) + ' has no "weight_map"'):
        mmjax.load(path)


def test_transposed_tensor_names_tensor_file_and_both_shapes(tmp_path):
    path = _copy("gqa_default", tmp_path / "ckpt")
    name = "language_model.model.layers.0.self_attn.k_proj.weight"  # (1 KV head * 8, text 40) in torch layout
    _edit_tensors(path, lambda t: t.update({name: np.ascontiguousarray(t[name].T)}))
    file = os.path.join(path, "model.safetensors")
    with pytest.raises(ValueError, match=re.escape(f"tensor {name!r} in {file} has shape (40, 8), expected (8, 40)")):
        mmjax.load(path)


@pytest.mark.parametrize(
    "edit, message",
    [
        (_set("text_config", "hidden_size", "512"),
         "field text_config.hidden_size has a wrong type: expected int, got str"),
        (_set("text_config", "num_hidden_layers", 2.5),
         "field text_config.num_hidden_layers has a wrong type: expected int, got float"),
        (_set("vision_config", "hidden_size", "28"),
         "field vision_config.hidden_size has a wrong type: expected int, got str"),
        (_set("text_config", "rms_norm_eps", "1e-5"),
         "field text_config.rms_norm_eps has a wrong type: expected float, got str"),
        (_set("image_token_index", "383"), "field image_token_index has a wrong type: expected int, got str"),
        (_set("image_token_id", "383"),
         "field image_token_id (an alias of image_token_index) has a wrong type: expected int, got str"),
    ],
    ids=["text_hidden_str", "layers_float", "vision_hidden_str", "eps_str", "image_token_index_str",
         "image_token_id_str"],
)  # fmt: skip
def test_wrong_typed_config_field_is_named_with_its_path(tmp_path, edit, message):
    path = _copy("gqa_default", tmp_path / "ckpt")
    _edit_config(path, edit)
    with pytest.raises(TypeError, match=re.escape(os.path.join(path, "config.json") + ": " + message)):
        mmjax.load(path)


def test_wrong_typed_image_token_in_code_is_named():
    """A config built in code bypasses the file checks; LlavaConfig.from_hf still names the field."""
    from mmjax.models.llava.config import LlavaConfig
    from mmjax.registry.config import load_hf_config as read_hf_config

    hf = read_hf_config(checkpoint("gqa_default"))
    hf.image_token_id = "383"  # an alias: transformers stores it without its type check
    message = r"config\.json: field image_token_index \(image_token_id\) must be an int, got str '383'"
    with pytest.raises(TypeError, match=message):
        LlavaConfig.from_hf(hf)


def test_config_that_is_not_json_is_named(tmp_path):
    path = _copy("gqa_default", tmp_path / "ckpt")
    file = os.path.join(path, "config.json")
    _truncate(file, 100)
    with pytest.raises(ValueError, match=re.escape(file) + r" is not valid JSON \(truncated or hand-edited\?\): "):
        mmjax.load(path)
    with open(file, "w") as f:
        json.dump(["llava"], f)
    with pytest.raises(ValueError, match=re.escape(file) + " must hold a JSON object, got a JSON list"):
        mmjax.load(path)


_TOKENIZER_FILES = "tokenizer.json, tokenizer_config.json, tokenizer.model, vocab.json, merges.txt, vocab.txt"


def test_missing_tokenizer_files_are_named(tmp_path):
    path = _copy("gqa_default", tmp_path / "ckpt")
    os.remove(os.path.join(path, "tokenizer.json"))
    with pytest.raises(
        FileNotFoundError,
        match=re.escape(f"could not load a tokenizer from {path!r}: looked for {_TOKENIZER_FILES}, found only "
                        "tokenizer_config.json (a fast tokenizer needs tokenizer.json)"),
    ):
        mmjax.load(path)
    os.remove(os.path.join(path, "tokenizer_config.json"))
    with pytest.raises(
        FileNotFoundError,
        match=re.escape(f"could not load a tokenizer from {path!r}: none of {_TOKENIZER_FILES} exists there"),
    ):
        mmjax.load(path)


def test_corrupt_tokenizer_file_is_named(tmp_path):
    path = _copy("gqa_default", tmp_path / "ckpt")
    file = os.path.join(path, "tokenizer.json")
    _truncate(file, 1000)
    with pytest.raises(ValueError, match="could not load a tokenizer: " + re.escape(file) + " is not valid JSON"):
        mmjax.load(path)


def test_missing_image_processor_config_fails_at_load(tmp_path):
    path = _copy("gqa_default", tmp_path / "ckpt")
    os.remove(os.path.join(path, "preprocessor_config.json"))
    assert not os.path.exists(os.path.join(path, "processor_config.json"))
    with pytest.raises(
        FileNotFoundError,
        match=re.escape(f"could not load an image processor config from {path!r}: neither "
                        "preprocessor_config.json nor processor_config.json exists there")
        + r".*limit_mm_per_prompt=\{'image': 0\}",
    ):
        mmjax.load(path)
    text_only = mmjax.load(path, limit_mm_per_prompt={"image": 0})  # needs no image processor
    token_ids, logits = text_only.logits({"prompt": "hello"})
    assert logits.shape == (len(token_ids), 384) and np.isfinite(logits).all()


def test_corrupt_image_processor_config_is_named(tmp_path):
    path = _copy("gqa_default", tmp_path / "ckpt")
    file = os.path.join(path, "preprocessor_config.json")
    _truncate(file, 20)
    message = "could not load an image processor config: " + re.escape(file) + " is not valid JSON"
    with pytest.raises(ValueError, match=message):
        mmjax.load(path)
