"""``mmjax.load(..., quantization="int8")`` against an independent reference.

The reference: the test quantizes the tiny float checkpoint's decoder projections itself, with numpy
(round(w / (max |w| / 127)) per output row of torch's ``[out, in]`` weight), writes the *dequantized*
float weights back to a copy of the checkpoint, and runs transformers' PyTorch model on that copy.
mmjax's int8 model (int8 kernels, float32 scales applied after the product) must give those logits
to float32 rounding; against the float model it stays within the bound stated below, with the same
greedy tokens; ``save_pretrained`` writes int8 tensors that ``mmjax.load`` reads back as they are.
"""

from __future__ import annotations

import json
import os
import re
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

import mmjax
from mmjax.engine.memory import per_device_bytes
from tiny_llava import checkpoint, relative_error

PROMPT = "USER: <image>\nWhat is shown here? ASSISTANT:"
#: The decoder's projections in every family's hub spelling (LLaVA's and Gemma 3's ``language_model.model.``,
#: Qwen2.5-VL's ``model.``, Qwen3-VL's ``model.language_model.``), not the vision towers' (``vision_tower.``),
#: and an untied LM head.
PROJECTION = re.compile(r"^((model\.)?(language_model\.)?(model\.)?layers\.\d+\.(self_attn|mlp)\.\w+_proj"
                        r"|(language_model\.)?lm_head)\.weight$")
#: int8 against float32 logits on the tiny checkpoints: max |difference| / max |float32 logit|. Per-column
#: int8 rounds each weight by at most 1/254 of its column's largest; measured 0.026 on this checkpoint.
INT8_BOUND = 0.06


def numpy_dequantized(weight: np.ndarray) -> np.ndarray:
    """torch's ``[out, in]`` weight through int8 and back, one scale per output row (the reference's own
    formula, written here independently of mmjax)."""
    w = weight.astype(np.float64)
    scale = np.abs(w).max(axis=1, keepdims=True) / 127.0
    scale[scale == 0] = 1.0
    return (np.clip(np.round(w / scale), -127, 127) * scale).astype(np.float32)


@pytest.fixture(scope="module")
def ckpt() -> str:
    return checkpoint("gqa_default")


def write_dequantized(ckpt: str, out: str) -> str:
    """A copy of ``ckpt`` whose decoder projections went through int8 and back (``numpy_dequantized``)."""
    shutil.copytree(ckpt, out, dirs_exist_ok=True)
    matched = 0
    for file in sorted(f for f in os.listdir(ckpt) if f.endswith(".safetensors")):
        tensors = load_file(os.path.join(ckpt, file))
        for name in [n for n in tensors if PROJECTION.search(n)]:
            tensors[name] = numpy_dequantized(tensors[name])
            matched += 1
        save_file(tensors, os.path.join(out, file), metadata={"format": "pt"})
    assert matched, "the reference found no decoder projection to quantize"
    return out


@pytest.fixture(scope="module")
def dequantized_ckpt(ckpt, tmp_path_factory) -> str:
    return write_dequantized(ckpt, str(tmp_path_factory.mktemp("dequantized")))


@pytest.fixture(scope="module")
def image():
    from PIL import Image

    return Image.fromarray((np.random.default_rng(0).random((40, 56, 3)) * 255).astype(np.uint8))


@pytest.fixture(scope="module")
def int8_llm(ckpt):
    return mmjax.load(ckpt, quantization="int8")


@pytest.fixture(scope="module")
def float_llm(ckpt):
    return mmjax.load(ckpt)


def transformers_logits(path: str, processed) -> np.ndarray:
    import torch
    from transformers import LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration.from_pretrained(path).eval()
    with torch.no_grad():
        out = model(input_ids=torch.from_numpy(np.asarray(processed.token_ids, np.int64)[None]),
                    pixel_values=torch.from_numpy(np.asarray(processed.mm_kwargs["pixel_values"])))
    return out.logits[0].float().numpy()


def test_int8_logits_are_transformers_on_the_dequantized_weights(int8_llm, dequantized_ckpt, image):
    prompt = {"prompt": PROMPT, "multi_modal_data": {"image": image}}
    _, logits = int8_llm.logits(prompt)
    want = transformers_logits(dequantized_ckpt, int8_llm.process(prompt))
    assert relative_error(logits, want) < 2e-5


def test_int8_stores_the_projections_as_int8_and_the_rest_as_loaded(int8_llm, float_llm):
    dtypes = {"/".join(map(str, p)): v.get_value().dtype for p, v in nnx.to_flat_state(int8_llm.state)}
    projections = [p for p in dtypes
                   if re.search(r"^language_model/(layers/\d+/(self_attn|mlp)/\w+_proj|lm_head)/kernel$", p)]
    assert len(projections) == 7 * int8_llm.hf_config.text_config.num_hidden_layers + 1  # + the untied head
    assert all(dtypes[p] == jnp.int8 and dtypes[p + "_scale"] == jnp.float32 for p in projections)
    others = [p for p in dtypes if p not in projections and not p.endswith("kernel_scale")]
    assert all(dtypes[p] == jnp.float32 for p in others)  # vision tower, projector, embedding, norms
    # the memory plan reads the stored form: each projection's bytes drop from 4 to 1 per weight (+ scales)
    kernels = {p: v.get_value() for p, v in nnx.to_flat_state(float_llm.state)
               if "/".join(map(str, p)) in projections}
    saved = sum(k.size * 3 - k.shape[1] * 4 for k in kernels.values())
    assert per_device_bytes(float_llm.state) - per_device_bytes(int8_llm.state) == saved


def test_int8_logits_stay_within_the_bound_of_float32s(int8_llm, float_llm, image):
    prompt = {"prompt": PROMPT, "multi_modal_data": {"image": image}}
    _, want = float_llm.logits(prompt)
    _, got = int8_llm.logits(prompt)
    assert relative_error(got, want) < INT8_BOUND


def test_int8_engine_greedy_tokens_are_transformers_on_the_dequantized_weights(int8_llm, dequantized_ckpt, image):
    """Through the engine (paged KV, decode steps on the CPU kernels): transformers' greedy tokens on the
    dequantized weights. (The tiny random model's logits are too close for float32's own tokens to be a
    fair target: its text prompt's first token differs by a margin below the int8 bound.)"""
    import torch
    from transformers import LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration.from_pretrained(dequantized_ckpt).eval()
    prompts = [{"prompt": PROMPT, "multi_modal_data": {"image": image}},
               {"prompt": "USER: Hello there, who are you? ASSISTANT:"}]
    params = mmjax.SamplingParams(temperature=0.0, max_tokens=10, ignore_eos=True)
    outs = mmjax.generate(int8_llm, prompts, params, use_tqdm=False)
    for prompt, out in zip(prompts, outs):
        processed = int8_llm.process(prompt)
        ids = torch.from_numpy(np.asarray(processed.token_ids, np.int64)[None])
        pixels = processed.mm_kwargs.get("pixel_values")
        pixels = None if pixels is None else torch.from_numpy(np.asarray(pixels))
        with torch.no_grad():  # greedy by hand: EOS neither stops nor is suppressed, as with ignore_eos
            for _ in range(10):
                next_id = model(input_ids=ids, pixel_values=pixels).logits[0, -1].argmax()
                ids = torch.cat([ids, next_id.view(1, 1)], dim=1)
        assert list(out.outputs[0].token_ids) == ids[0, len(processed.token_ids):].tolist()


def test_save_pretrained_writes_int8_that_load_reads_as_stored(int8_llm, image, tmp_path):
    out = mmjax.save_pretrained(int8_llm, tmp_path / "int8")
    config = json.load(open(os.path.join(out, "config.json")))
    assert config["quantization_config"]["quant_method"] == "mmjax_int8"
    with safe_open(os.path.join(out, "model.safetensors"), "numpy") as f:
        name = "model.language_model.layers.0.mlp.down_proj"
        weight, scale = f.get_tensor(name + ".weight"), f.get_tensor(name + ".weight_scale")
    assert weight.dtype == np.int8 and scale.dtype == np.float32 and scale.shape == (weight.shape[0],)
    stored = int8_llm.model.language_model.layers[0].mlp.down_proj
    np.testing.assert_array_equal(weight.T, np.asarray(stored.kernel[...]))  # torch's [out, in]
    reloaded = mmjax.load(out)  # no quantization argument: as stored, not quantized again
    prompt = {"prompt": PROMPT, "multi_modal_data": {"image": image}}
    np.testing.assert_array_equal(reloaded.logits(prompt)[1], int8_llm.logits(prompt)[1])


def test_bfloat16_activations_with_int8_weights(ckpt, float_llm, image):
    llm = mmjax.load(ckpt, dtype="bfloat16", quantization="int8")
    prompt = {"prompt": PROMPT, "multi_modal_data": {"image": image}}
    _, want = float_llm.logits(prompt)
    assert relative_error(llm.logits(prompt)[1], want) < 2 * INT8_BOUND


def test_bad_quantization_is_refused_by_name(ckpt, tmp_path):
    with pytest.raises(ValueError, match=r"quantization must be None or one of \['int8'\], got 'int4'"):
        mmjax.load(ckpt, quantization="int4")
    other = tmp_path / "awq"
    shutil.copytree(ckpt, other)
    config = json.load(open(other / "config.json"))
    config["quantization_config"] = {"quant_method": "awq", "bits": 4}
    json.dump(config, open(other / "config.json", "w"))
    with pytest.raises(ValueError, match=r"quant_method='awq' is not supported"):
        mmjax.load(other)


def test_quantized_layers_are_only_those_the_family_names():
    from mmjax.models.common.linear import Linear, quantize_linear_layers

    model = nnx.Dict(a=Linear(4, 3, rngs=nnx.Rngs(0)), b=Linear(3, 2, rngs=nnx.Rngs(1)))
    quantize_linear_layers(model, r"^a$")
    assert model["a"].quantized and not model["b"].quantized
    with pytest.raises(ValueError, match="no linear layer of Dict matches 'c'"):
        quantize_linear_layers(model, "c")


def test_quantize_int8_is_the_symmetric_per_column_formula():
    from mmjax.models.common.linear import quantize_int8

    w = np.random.default_rng(1).standard_normal((33, 7)).astype(np.float32)
    w[:, 3] = 0.0  # an all-zero column keeps scale 1 (no division by zero)
    w[5, 0] = -4 * np.abs(w[:, 0]).max()  # the extreme goes to -127
    q, scale = quantize_int8(w)
    want = numpy_dequantized(w.T).T
    np.testing.assert_allclose(np.asarray(q, np.float32) * scale, want, rtol=1e-6, atol=1e-7)
    assert q.dtype == np.int8 and q[5, 0] == -127 and scale[3] == 1.0
    jq, jscale = jax.jit(quantize_int8)(jnp.asarray(w))  # on device in float32: at most a step at a half
    assert np.abs(np.asarray(jq, np.int32) - q).max() <= 1 and np.mean(np.asarray(jq) == q) > 0.99
    np.testing.assert_allclose(np.asarray(jscale), scale, rtol=1e-7)


def numpy_target_loss(llm, prompt: str, target: str) -> float:
    """Mean cross-entropy of ``target`` + EOS after ``prompt``, from ``llm.logits`` (numpy, written here)."""
    prompt_ids = llm.tokenizer(prompt).input_ids
    target_ids = llm.tokenizer(target, add_special_tokens=False).input_ids + [llm.tokenizer.eos_token_id]
    _, logits = llm.logits({"prompt_token_ids": prompt_ids + target_ids})
    rows = logits[len(prompt_ids) - 1:-1].astype(np.float64)
    logprobs = rows - rows.max(-1, keepdims=True)
    logprobs -= np.log(np.exp(logprobs).sum(-1, keepdims=True))
    return float(-np.mean(logprobs[np.arange(len(target_ids)), target_ids]))


def test_lora_trains_float_adapters_over_int8_weights_and_merges_back_to_int8(int8_llm):
    """QLoRA: the int8 projections stay frozen while float adapters train; the merged model is int8 again
    and keeps what was learnt (its loss, computed here from its logits, falls as training's did)."""
    prompt, target = "USER: What is the secret word? ASSISTANT:", " banana banana"
    example = mmjax.TrainExample(prompt=prompt, target=target)
    before = numpy_target_loss(int8_llm, prompt, target)
    result = mmjax.train(int8_llm, [example] * 4, trainable="lora", steps=12, batch_size=4,
                         optimizer=optax.adam(3e-2), use_tqdm=False)
    assert result.losses[0] == pytest.approx(before, rel=1e-4)  # step 0 is the int8 model itself
    assert result.losses[-1] < 0.5 * result.losses[0]
    after = numpy_target_loss(result.llm, prompt, target)
    assert after < 0.6 * before  # quantized again, the learnt adapter survives
    layer = result.llm.model.language_model.layers[0].self_attn
    assert layer.q_proj.kernel[...].dtype == jnp.int8 and layer.q_proj.kernel_scale[...].dtype == jnp.float32
    base = int8_llm.model.language_model.layers[0].self_attn
    assert not np.array_equal(np.asarray(layer.q_proj.kernel[...]), np.asarray(base.q_proj.kernel[...]))
    assert "up_proj" not in mmjax.LoraConfig().targets  # an unadapted layer is the base's, bit for bit
    np.testing.assert_array_equal(np.asarray(result.llm.model.language_model.layers[0].mlp.up_proj.kernel[...]),
                                  np.asarray(int8_llm.model.language_model.layers[0].mlp.up_proj.kernel[...]))


def test_training_every_parameter_of_an_int8_model_is_refused_with_the_way_out(int8_llm):
    example = mmjax.TrainExample(prompt="USER: hi ASSISTANT:", target=" hello")
    with pytest.raises(ValueError, match=r"trainable='all' needs float projections.*trainable='lora'"):
        mmjax.train(int8_llm, [example], trainable="all", steps=1)



def test_int8_decode_steps_run_every_projection_on_the_int8_kernel(int8_llm):
    """The engine's one-sequence decode step (one row) reads each projection and the LM head as int8 on the
    CPU kernel."""
    from mmjax.kernels_cpu.skinny_matmul import INT8_TARGET

    config = mmjax.EngineConfig(max_num_seqs=2, max_num_batched_tokens=64, num_pages=40, page_size=8,
                                max_model_len=256)
    text = int8_llm.engine(config).runner.lower_step(1, decode=True).as_text()
    assert text.count(INT8_TARGET) >= 7 * int8_llm.hf_config.text_config.num_hidden_layers + 1  # + the LM head


@pytest.mark.parametrize("family", ["gemma3", "qwen2_5_vl", "qwen3_vl"])
def test_every_family_quantizes_its_decoder_projections(family, tmp_path):
    """Gemma 3 and Qwen-VL in int8: the logits of their float model on the weights dequantized by the test
    (an image prompt), and their projections' kernels int8."""
    import tiny_gemma3
    import tiny_qwen

    helpers = tiny_gemma3 if family == "gemma3" else tiny_qwen
    ckpt = tiny_gemma3.checkpoint() if family == "gemma3" else tiny_qwen.checkpoint(family=family)
    image = helpers.picture(48, 64)
    prompt = {"prompt": helpers.chat("What is this?", images=1), "multi_modal_data": {"image": image}}
    int8 = mmjax.load(ckpt, quantization="int8")
    reference = mmjax.load(write_dequantized(ckpt, str(tmp_path / "dequantized")))
    assert relative_error(int8.logits(prompt)[1], reference.logits(prompt)[1]) < 2e-5
    kernel = int8.model.language_model.layers[0].mlp.down_proj.kernel[...]
    assert kernel.dtype == jnp.int8
