"""The tiny Qwen2.5-VL / Qwen3-VL checkpoints load in transformers as the Hub's do, in both layouts.

transformers' own classes are the judges: AutoConfig, AutoTokenizer, AutoImageProcessor,
AutoProcessor (its video processor a config stand-in: transformers 5 cannot build any
Qwen-VL processor without torchvision, see ``mmjax.testing.qwen_hf_processor``) and
AutoModelForImageTextToText, whose forward runs on the processor's output.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from transformers import AutoConfig, AutoImageProcessor, AutoModelForImageTextToText, AutoTokenizer, GenerationConfig

from mmjax.testing.qwen_chat_templates import QWEN2_5_VL_CHAT_TEMPLATE, QWEN3_VL_CHAT_TEMPLATE
from mmjax.testing.qwen_checkpoints import make_tiny_qwen2_5_vl_checkpoint, make_tiny_qwen3_vl_checkpoint
from mmjax.testing.qwen_hf_processor import VideoConfigStandIn, load_hf_processor
from mmjax.testing.qwen_specs import TinyQwen2_5VLSpec, TinyQwen3VLSpec

MAKERS = {"qwen2_5_vl": make_tiny_qwen2_5_vl_checkpoint, "qwen3_vl": make_tiny_qwen3_vl_checkpoint}
SPECS = {"qwen2_5_vl": TinyQwen2_5VLSpec, "qwen3_vl": TinyQwen3VLSpec}
CLASSES = {
    "qwen2_5_vl": ("Qwen2_5_VLConfig", "Qwen2_5_VLForConditionalGeneration"),
    "qwen3_vl": ("Qwen3VLConfig", "Qwen3VLForConditionalGeneration"),
}
CASES = [(family, layout) for family in MAKERS for layout in ("hub", "save_pretrained")]
FILES = {
    "hub": {
        "config.json", "generation_config.json", "model.safetensors", "preprocessor_config.json",
        "video_preprocessor_config.json", "chat_template.json", "tokenizer.json", "tokenizer_config.json",
        "vocab.json", "merges.txt",
    },
    "save_pretrained": {
        "config.json", "generation_config.json", "model.safetensors", "processor_config.json", "chat_template.jinja",
        "tokenizer.json", "tokenizer_config.json",
    },
}  # fmt: skip
MESSAGES = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is shown?"}]}]
PROMPTS = {  # the Instruct templates' rendering of MESSAGES with add_generation_prompt
    "qwen2_5_vl": "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
    "<|vision_start|><|image_pad|><|vision_end|>What is shown?<|im_end|>\n<|im_start|>assistant\n",
    "qwen3_vl": "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>What is shown?<|im_end|>\n"
    "<|im_start|>assistant\n",
}


@pytest.fixture(scope="module")
def build(tmp_path_factory) -> Callable[..., str]:
    """``build(family, layout="hub", seed=0, **overrides)``: the checkpoint's directory, written once."""
    made: dict[str, str] = {}

    def checkpoint(family: str, layout: str = "hub", seed: int = 0, **overrides) -> str:
        key = json.dumps([family, layout, seed, overrides], sort_keys=True)
        if key not in made:
            path = tmp_path_factory.mktemp(f"{family}-{layout}")
            made[key] = MAKERS[family](path, seed=seed, layout=layout, **overrides)
        return made[key]

    return checkpoint


def _weights(path: str) -> dict[str, torch.Tensor]:
    with safe_open(os.path.join(path, "model.safetensors"), "pt") as f:
        return {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118 (safe_open is not iterable)


def _image(height: int, width: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(height * width).integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.mark.parametrize("family, layout", CASES)
def test_the_layout_has_the_files_transformers_or_the_hub_has(build, family, layout):
    assert set(os.listdir(build(family, layout))) == FILES[layout]


@pytest.mark.parametrize("family, layout", CASES)
def test_config_holds_the_spec_and_the_tokenizer_ids(build, family, layout):
    path, spec = build(family, layout), SPECS[family]()
    config, ids = AutoConfig.from_pretrained(path), spec.token_ids
    text, vision = config.text_config, config.vision_config
    assert type(config).__name__ == CLASSES[family][0]
    assert (config.image_token_id, config.video_token_id) == (ids.image_pad, ids.video_pad)
    assert (config.vision_start_token_id, config.vision_end_token_id) == (ids.vision_start, ids.vision_end)
    assert (text.hidden_size, text.num_attention_heads, text.num_key_value_heads) == (64, 4, 2)
    assert (text.intermediate_size, text.num_hidden_layers) == (86, spec.num_layers)
    assert text.vocab_size == spec.model_vocab_size == {"qwen2_5_vl": 481 + 22, "qwen3_vl": 483 + 26}[family]
    assert text.rope_parameters["mrope_section"] == [2, 3, 3] and not config.tie_word_embeddings
    assert (vision.depth, vision.hidden_size, vision.num_heads, vision.out_hidden_size) == (4, 36, 3, 64)
    assert (vision.patch_size, vision.spatial_merge_size, vision.temporal_patch_size) == (spec.patch_size, 2, 2)
    if family == "qwen2_5_vl":
        assert (vision.fullatt_block_indexes, vision.window_size, vision.tokens_per_second) == ([1, 3], 56, 2)
    else:
        assert text.rope_parameters["mrope_interleaved"] is True and text.head_dim == 16
        assert (vision.deepstack_visual_indexes, vision.num_position_embeddings) == ([0, 2], 64)
    generation = GenerationConfig.from_pretrained(path)
    assert generation.eos_token_id == [ids.im_end, ids.endoftext] and generation.pad_token_id == ids.endoftext


def test_config_json_is_in_the_form_each_writer_uses(build):
    def read(family: str, layout: str) -> dict:
        with open(os.path.join(build(family, layout), "config.json")) as f:
            return json.load(f)

    hub = read("qwen2_5_vl", "hub")  # transformers 4.41's flat form
    assert "text_config" not in hub and hub["rope_scaling"] == {"type": "mrope", "mrope_section": [2, 3, 3]}
    assert hub["vision_config"]["in_chans"] == 3 and hub["num_hidden_layers"] == 2
    resaved = read("qwen2_5_vl", "save_pretrained")  # transformers 5 nests it
    assert resaved["text_config"]["rope_parameters"]["mrope_section"] == [2, 3, 3] and "rope_scaling" not in resaved
    hub3 = read("qwen3_vl", "hub")
    assert hub3["text_config"]["rope_scaling"]["mrope_interleaved"] is True
    assert hub3["vision_config"]["model_type"] == "qwen3_vl"
    assert read("qwen3_vl", "save_pretrained")["vision_config"]["model_type"] == "qwen3_vl_vision"


@pytest.mark.parametrize("family, layout", CASES)
def test_weight_names_are_the_hub_checkpoints(build, family, layout):
    """transformers 5 saves Qwen2.5-VL under its old names (``model.layers``, ``visual``), Qwen3-VL under the new."""
    prefixes = {".".join(name.split(".")[:2]) for name in _weights(build(family, layout))}
    if family == "qwen2_5_vl":
        expected = {"model.embed_tokens", "model.layers", "model.norm", "visual.blocks", "visual.merger"}
        assert prefixes == expected | {"visual.patch_embed", "lm_head.weight"}
    else:
        assert prefixes == {"model.language_model", "model.visual", "lm_head.weight"}


@pytest.mark.parametrize("family, layout", CASES)
def test_tokenizer_has_the_qwen_special_tokens_at_the_end(build, family, layout):
    spec = SPECS[family]()
    tokenizer = AutoTokenizer.from_pretrained(build(family, layout))
    assert type(tokenizer).__name__ == "Qwen2Tokenizer" and len(tokenizer) == spec.tokenizer_size
    added = [text for text, _ in spec.added_tokens]
    first = spec.bpe_vocab_size
    assert tokenizer.convert_tokens_to_ids(added) == list(range(first, first + len(added)))
    assert (tokenizer.eos_token, tokenizer.pad_token, tokenizer.bos_token) == ("<|im_end|>", "<|endoftext|>", None)
    text = "<|im_start|>user\nPicture 1: <|vision_start|><|image_pad|><|vision_end|> a café<|im_end|>"
    ids = tokenizer(text).input_ids
    assert tokenizer.decode(ids) == text
    vision = [spec.token_ids.vision_start, spec.token_ids.image_pad, spec.token_ids.vision_end]
    assert any(ids[i : i + 3] == vision for i in range(len(ids)))


def test_chat_templates_are_the_published_text():
    """SHA-256 of the templates as Qwen/Qwen2.5-VL-7B-Instruct and Qwen/Qwen3-VL-8B-Instruct ship them."""
    assert hashlib.sha256(QWEN2_5_VL_CHAT_TEMPLATE.encode()).hexdigest() == (
        "a0bc6f6fc7a29a80017a433e8f03a1cc1236e838a944a2d034295a60c4f2fddb"
    )
    assert hashlib.sha256(QWEN3_VL_CHAT_TEMPLATE.encode()).hexdigest() == (
        "3636d0f0bd6bef02654cdffdc447b79cb2cef8ab02cc75267345946291a489e4"
    )


@pytest.mark.parametrize("family, layout", CASES)
def test_chat_template_puts_the_vision_placeholders(build, family, layout):
    path = build(family, layout)
    processor, tokenizer = load_hf_processor(path), AutoTokenizer.from_pretrained(path)
    template = {"qwen2_5_vl": QWEN2_5_VL_CHAT_TEMPLATE, "qwen3_vl": QWEN3_VL_CHAT_TEMPLATE}[family]
    assert processor.chat_template == template
    assert processor.apply_chat_template(MESSAGES, add_generation_prompt=True) == PROMPTS[family]
    assert tokenizer.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True) == PROMPTS[family]
    video = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "And here?"}]}]
    assert "<|vision_start|><|video_pad|><|vision_end|>And here?" in processor.apply_chat_template(video)


# (height, width) -> merged-token grid, by smart_resize with the tiny budgets: 4..64 tokens of 28 px (Qwen2.5-VL)
# or 32 px (Qwen3-VL). 50x100 rounds to 56x112 / 64x96; 10x10 is scaled up to the minimum, 2x2 tokens; 300x400
# is over the maximum and scaled down to 168x252 / 192x288, 6x9 tokens either way.
GRIDS = {
    "qwen2_5_vl": {(50, 100): (2, 4), (10, 10): (2, 2), (300, 400): (6, 9)},
    "qwen3_vl": {(50, 100): (2, 3), (10, 10): (2, 2), (300, 400): (6, 9)},
}


@pytest.mark.parametrize("family, layout", CASES)
def test_processor_expands_the_image_pad_and_the_model_runs_on_it(build, family, layout):
    path, spec = build(family, layout), SPECS[family]()
    processor = load_hf_processor(path)
    assert type(processor.image_processor).__name__ == "Qwen2VLImageProcessorPil"
    assert type(AutoImageProcessor.from_pretrained(path)).__name__ == "Qwen2VLImageProcessorPil"
    for (height, width), (rows, cols) in GRIDS[family].items():
        inputs = processor(text=[PROMPTS[family]], images=[_image(height, width)], return_tensors="pt")
        assert inputs["image_grid_thw"].tolist() == [[1, 2 * rows, 2 * cols]]
        assert inputs["pixel_values"].shape == (4 * rows * cols, 3 * 2 * spec.patch_size**2)
        ids = inputs["input_ids"][0].tolist()
        start = ids.index(spec.token_ids.vision_start)
        pads = [spec.token_ids.image_pad] * (rows * cols)
        assert ids[start + 1 : start + 2 + rows * cols] == pads + [spec.token_ids.vision_end]
        assert ids.count(spec.token_ids.image_pad) == rows * cols
    model = AutoModelForImageTextToText.from_pretrained(path).eval()
    assert type(model).__name__ == CLASSES[family][1]
    with torch.no_grad():
        logits = model(**inputs).logits
    assert logits.shape == (1, len(ids), spec.model_vocab_size) and torch.isfinite(logits).all()


def test_pixel_budget_overrides_reach_the_processor(build):
    path = build("qwen2_5_vl", max_pixels=16 * 28 * 28)  # 300x400 -> 84x112, 3x4 tokens
    with open(os.path.join(path, "preprocessor_config.json")) as f:
        assert json.load(f)["max_pixels"] == 16 * 28 * 28
    inputs = load_hf_processor(path)(text=[PROMPTS["qwen2_5_vl"]], images=[_image(300, 400)])
    assert inputs["image_grid_thw"].tolist() == [[1, 6, 8]]


@pytest.mark.parametrize("family, layout", CASES)
def test_video_processor_is_a_stand_in_holding_the_video_budget(build, family, layout):
    video = load_hf_processor(build(family, layout)).video_processor
    assert isinstance(video, VideoConfigStandIn)
    if family == "qwen2_5_vl":
        assert video.video_processor_type == "Qwen2VLVideoProcessor"
        assert (video.min_pixels, video.max_pixels) == (4 * 28 * 28, 16 * 28 * 28)
    else:
        assert video.video_processor_type == "Qwen3VLVideoProcessor"
        assert video.size == {"longest_edge": 256 * 32 * 32, "shortest_edge": 4 * 32 * 32}
    with pytest.raises(NotImplementedError, match="torchvision"):
        video(np.zeros((4, 32, 32, 3), dtype=np.uint8))


@pytest.mark.parametrize("family", MAKERS)
def test_weights_are_random_and_drawn_from_the_seed(build, tmp_path, family):
    weights = _weights(build(family))
    again = _weights(MAKERS[family](tmp_path, seed=0))
    other = _weights(build(family, seed=1))
    assert weights.keys() == again.keys() == other.keys()
    assert all(torch.equal(weights[name], again[name]) for name in weights)
    assert not any(torch.equal(weights[name], other[name]) for name in weights)
    norms = [name for name in weights if weights[name].ndim == 1 and "norm" in name and name.endswith("weight")]
    biases = [name for name in weights if name.endswith(".bias")]
    assert len(norms) > 10 and len(biases) > 10
    assert not any(torch.all(weights[name] == 1) for name in norms)
    assert not any(torch.all(weights[name] == 0) for name in biases)


@pytest.mark.parametrize("family", MAKERS)
def test_tied_embeddings_save_no_lm_head(build, family):
    path = build(family, tie_word_embeddings=True)
    assert "lm_head.weight" not in _weights(path) and AutoConfig.from_pretrained(path).tie_word_embeddings
    model = AutoModelForImageTextToText.from_pretrained(path)
    assert torch.equal(model.lm_head.weight, model.get_input_embeddings().weight)


def test_sharded_weights_have_an_index(build):
    path = build("qwen3_vl", shard=True)
    with open(os.path.join(path, "model.safetensors.index.json")) as f:
        weight_map = json.load(f)["weight_map"]
    assert len(set(weight_map.values())) > 1 and "model.visual.pos_embed.weight" in weight_map
    model = AutoModelForImageTextToText.from_pretrained(path)
    assert model.lm_head.weight.shape == (TinyQwen3VLSpec().tokenizer_size, 64)


def test_specs_refuse_inconsistent_sizes():
    with pytest.raises(ValueError, match="mrope_section"):
        TinyQwen2_5VLSpec(mrope_section=(2, 2, 2))
    with pytest.raises(ValueError, match="square"):
        TinyQwen3VLSpec(num_position_embeddings=60)
    with pytest.raises(ValueError, match="vocab_size"):
        TinyQwen3VLSpec(vocab_size=500)  # the tokenizer has 509 ids
