"""The tiny Gemma 3 checkpoints load in transformers as the Hub's do, and hold what the tests rely on.

transformers' own classes are the judges: AutoConfig, AutoTokenizer, AutoProcessor (``Gemma3Processor``)
and the models, whose forward runs on the processor's output.
"""

from __future__ import annotations

import json
import os

import numpy as np
import torch
from transformers import AutoConfig, AutoProcessor, AutoTokenizer, GenerationConfig

from mmjax.testing.gemma3_chat_template import GEMMA3_CHAT_TEMPLATE
from mmjax.testing.gemma3_checkpoints import make_tiny_gemma3_checkpoint
from mmjax.testing.gemma3_specs import TinyGemma3Spec, TinyGemma3TextSpec
from tests.models.tiny_gemma3 import chat, checkpoint, hf_processor, picture, reference

HUB_FILES = {
    "config.json", "generation_config.json", "model.safetensors", "preprocessor_config.json",
    "processor_config.json", "chat_template.json", "tokenizer.json", "tokenizer_config.json",
    "special_tokens_map.json", "added_tokens.json",
}  # fmt: skip
TEXT_FILES = HUB_FILES - {"preprocessor_config.json", "processor_config.json", "chat_template.json"}


def test_files_are_the_hubs():
    assert set(os.listdir(checkpoint())) == HUB_FILES
    assert set(os.listdir(checkpoint("text"))) == TEXT_FILES


def test_config_token_ids_agree_with_the_tokenizer():
    config, tokenizer, ids = AutoConfig.from_pretrained(checkpoint()), AutoTokenizer.from_pretrained(checkpoint()), \
        TinyGemma3Spec().token_ids
    assert type(config).__name__ == "Gemma3Config" and config.architectures == ["Gemma3ForConditionalGeneration"]
    assert config.boi_token_index == tokenizer.convert_tokens_to_ids("<start_of_image>") == tokenizer.boi_token_id
    assert config.eoi_token_index == tokenizer.convert_tokens_to_ids("<end_of_image>") == ids.eoi
    assert config.image_token_index == tokenizer.image_token_id == ids.image_soft == len(tokenizer) - 1
    assert [tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.bos_token_id] == [0, 1, 2]
    assert config.text_config.vocab_size >= len(tokenizer) and config.text_config.vocab_size % 64 == 0
    assert GenerationConfig.from_pretrained(checkpoint()).eos_token_id == [1, ids.end_of_turn]


def test_text_config_has_both_attention_kinds_and_two_rope_bases():
    text = AutoConfig.from_pretrained(checkpoint()).text_config
    assert set(text.layer_types) == {"sliding_attention", "full_attention"} and text.num_hidden_layers == 6
    assert text.query_pre_attn_scalar != text.head_dim and text.sliding_window == 8
    full, local = text.rope_parameters["full_attention"], text.rope_parameters["sliding_attention"]
    assert full["rope_type"] == "linear" and full["factor"] == 8.0 and full["rope_theta"] != local["rope_theta"]
    causal = AutoConfig.from_pretrained(checkpoint("text"))
    assert type(causal).__name__ == "Gemma3TextConfig" and causal.architectures == ["Gemma3ForCausalLM"]


def test_newline_runs_are_single_tokens():
    tokenizer = AutoTokenizer.from_pretrained(checkpoint())
    newline = TinyGemma3Spec().token_ids.newline
    ids = tokenizer("user\n\n\n<start_of_image>", add_special_tokens=False).input_ids
    assert ids[-2:] == [newline + 2, tokenizer.boi_token_id]
    assert tokenizer.decode(tokenizer("a\n\n\n\n\nb  é🙂").input_ids, skip_special_tokens=True) == "a\n\n\n\n\nb  é🙂"


def test_chat_template_is_gemmas():
    with open(os.path.join(checkpoint(), "chat_template.json"), encoding="utf-8") as f:
        assert json.load(f)["chat_template"] == GEMMA3_CHAT_TEMPLATE
    messages = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": " What is shown? "}]}]
    text = hf_processor().apply_chat_template(messages, add_generation_prompt=True)
    assert text == chat("Be brief.\n\n<start_of_image>What is shown?")
    tokenizer = AutoTokenizer.from_pretrained(checkpoint("text"))
    assert tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                         add_generation_prompt=True) == chat("hi")


def test_weights_are_redrawn_and_the_model_runs_on_the_processors_output():
    model = reference()
    norm = model.model.language_model.layers[0].input_layernorm.weight
    assert not torch.all(norm == 0) and not torch.all(norm == 1)
    assert torch.any(model.model.multi_modal_projector.mm_input_projection_weight != 0)
    inputs = hf_processor()(text=chat("Describe.", 1), images=[picture(40, 70)], return_tensors="pt")
    assert inputs["pixel_values"].shape == (1, 3, 32, 32)
    assert int(inputs["token_type_ids"].sum()) == TinyGemma3Spec().mm_tokens_per_image
    with torch.no_grad():
        logits = model(**inputs).logits
    assert logits.shape[-1] == model.config.text_config.vocab_size and torch.isfinite(logits).all()


def test_text_only_checkpoint_runs():
    model, tokenizer = reference("text"), AutoTokenizer.from_pretrained(checkpoint("text"))
    ids = torch.tensor([tokenizer("The quick brown fox jumps over the lazy dog.").input_ids])
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], TinyGemma3TextSpec().model_vocab_size)


def test_overrides_and_seeds(tmp_path):
    path = make_tiny_gemma3_checkpoint(tmp_path / "small", seed=1, mm_tokens_per_image=4, sliding_window=4,
                                       processor={"do_pan_and_scan": True})
    config, processor = AutoConfig.from_pretrained(path), AutoProcessor.from_pretrained(path)
    assert config.mm_tokens_per_image == 4 and config.text_config.sliding_window == 4
    assert processor.image_seq_length == 4 and processor.image_processor.do_pan_and_scan is True
    from safetensors.numpy import load_file

    ours, other = load_file(os.path.join(path, "model.safetensors")), \
        load_file(os.path.join(checkpoint(), "model.safetensors"))
    key = "language_model.model.embed_tokens.weight"  # the Hub's (transformers 4.50's) key names
    assert {k.split(".")[0] for k in other} == {"language_model", "vision_tower", "multi_modal_projector"}
    assert ours[key].shape == other[key].shape and not np.allclose(ours[key], other[key])
