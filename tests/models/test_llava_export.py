"""save_llava writes a checkpoint transformers reads back to the same logits (no torch needed to write)."""

import numpy as np
import pytest
from flax import nnx

from mmjax.models.llava import load_llava
from mmjax.testing.random_llava import make_random_llava_checkpoint
from tiny_llava import our_logits, prompt, relative_error


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    path = tmp_path_factory.mktemp("exported")
    # 60 KB shards: several files and an index, like a real multi-GB checkpoint.
    return make_random_llava_checkpoint(path, image_size=30, patch_size=6, vision_hidden=28, text_hidden=40,
                                        max_shard_bytes=60_000, seed=7)


def test_export_is_sharded_with_an_index(exported):
    import os

    files = os.listdir(exported)
    assert "model.safetensors.index.json" in files
    assert sum(f.endswith(".safetensors") for f in files) > 1


def test_transformers_reads_the_export_to_the_same_logits(exported):
    import torch
    from transformers import LlavaForConditionalGeneration

    model, hf_config = load_llava(exported)
    input_ids, pixel_values = prompt(hf_config.image_token_id, 25, seed=3)
    ours = our_logits(model, input_ids, pixel_values)
    reference = LlavaForConditionalGeneration.from_pretrained(exported).eval()
    with torch.no_grad():
        want = reference(input_ids=torch.from_numpy(input_ids.astype(np.int64)),
                         pixel_values=torch.from_numpy(pixel_values)).logits.numpy()
    assert relative_error(ours, want) < 1e-4


def test_export_then_load_is_exact(exported, tmp_path):
    from mmjax.models.llava import save_llava

    model, hf_config = load_llava(exported)
    save_llava(model, hf_config, tmp_path)
    again, _ = load_llava(tmp_path)
    for (path_a, a), (path_b, b) in zip(nnx.to_flat_state(nnx.state(model, nnx.Param)),
                                        nnx.to_flat_state(nnx.state(again, nnx.Param))):
        assert path_a == path_b
        np.testing.assert_array_equal(np.asarray(a.get_value()), np.asarray(b.get_value()))
