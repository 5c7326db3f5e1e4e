"""Qwen3-VL with videos: token ids equal transformers' ``Qwen3VLProcessor`` (the timestamped run of each video),
M-RoPE positions equal ``get_rope_index``, logits equal transformers' for videos with and without an fps and for
images and videos in one prompt, and the engine's greedy tokens equal transformers'.

The reference is transformers' own ``Qwen3VLProcessor``, its ``Qwen3VLVideoProcessor`` run on the checkpoint's
video config through the test-only torchvision stand-in of ``tests/processing/qwen_reference.py``.
"""

from __future__ import annotations

import json
import os
import warnings
from unittest import mock

import jax
import numpy as np
import pytest
import torch
from transformers import AutoTokenizer
from transformers.models.qwen3_vl.processing_qwen3_vl import Qwen3VLProcessor
from transformers.processing_utils import ProcessorMixin

import mmjax
from mmjax.engine.runner import ModelRunner
from mmjax.models.qwen3_vl.hooks import encoder_input_variants
from mmjax.models.qwen3_vl.video_hooks import timestamp_join
from mmjax.registry import INPUT_REGISTRY, InputContext
from mmjax.training import TrainExample
from mmjax.training.examples import collate
from mmjax.training.params import ParamSplit
from mmjax.training.trainer import objective
from tests.processing.qwen_reference import pil_image_processor, video_processor
from tiny_qwen import IMAGE, chat, checkpoint, picture, reference, relative_error

VIDEO = "<|vision_start|><|video_pad|><|vision_end|>"
FAMILY = "qwen3_vl"


@pytest.fixture(scope="module")
def llm():
    return mmjax.load(checkpoint(family=FAMILY), limit_mm_per_prompt={"image": 2, "video": 2}, max_model_len=2048)


def clip(frames: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (frames, height, width, 3), dtype=np.uint8)


def hf_processor() -> Qwen3VLProcessor:
    """transformers' processor on the checkpoint's tokenizer, image and video settings (its sub-processor
    class check patched: without torchvision it cannot resolve the video processor's base class)."""
    path = checkpoint(family=FAMILY)
    with open(os.path.join(path, "video_preprocessor_config.json")) as f:
        settings = {k: v for k, v in json.load(f).items() if not k.endswith(("_type", "_class"))}
    with open(os.path.join(path, "preprocessor_config.json")) as f:
        image = {k: v for k, v in json.load(f).items() if not k.endswith(("_type", "_class"))}
    with mock.patch.object(ProcessorMixin, "check_argument_for_proper_class", lambda self, name, arg: type(arg)):
        return Qwen3VLProcessor(image_processor=pil_image_processor(**image),
                                tokenizer=AutoTokenizer.from_pretrained(path),
                                video_processor=video_processor("qwen3_vl", **settings))


def metadata(frames: np.ndarray, fps: float | None) -> dict:
    """The video metadata vLLM passes (all frames given, at ``fps``); ``fps`` None: unknown, what transformers
    fills in for a video without metadata (it then takes 24)."""
    return {"total_num_frames": len(frames), "fps": fps, "frames_indices": list(range(len(frames)))}


def transformers_inputs(text: str, videos: list[tuple[np.ndarray, float | None]], images: list | None = None) -> dict:
    """transformers' processor on the prompt text, its videos and images: the model's inputs."""
    kwargs = {"images": images} if images else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = hf_processor()(text=[text], videos=[v for v, _ in videos], return_tensors="pt", **kwargs,
                             videos_kwargs={"video_metadata": [metadata(v, fps) for v, fps in videos]})
    return {k: v for k, v in out.items() if k not in ("attention_mask", "video_metadata")}


def as_data(video: np.ndarray, fps: float | None):
    return video if fps is None else (video, {"fps": fps})


def check_against_transformers(llm, text: str, videos: list, images: list | None = None) -> dict:
    """Token ids, placeholder ranges, positions and logits of one prompt equal transformers'; its inputs."""
    data = {"video": [as_data(v, fps) for v, fps in videos]}
    if images:
        data["image"] = images
    prompt = {"prompt": text, "multi_modal_data": data}
    processed = llm.process(prompt)
    inputs = transformers_inputs(text, videos, images)
    ids = inputs["input_ids"]
    assert processed.token_ids.tolist() == ids[0].tolist()
    model = reference(family=FAMILY)[0]
    video_pad = model.config.video_token_id
    for placeholder, grid in zip(processed.placeholders["video"], inputs["video_grid_thw"]):
        run = processed.token_ids[placeholder.offset:placeholder.offset + placeholder.length]
        assert (run == video_pad).sum() == int(grid.prod()) // 4  # the frame tokens; the rest is their text
        assert run[-1] == model.config.vision_end_token_id
    grids = {k: inputs.get(k) for k in ("image_grid_thw", "video_grid_thw")}
    want, delta = model.model.get_rope_index(ids, inputs["mm_token_type_ids"], **grids)
    np.testing.assert_array_equal(processed.rope_positions, want[:, 0].numpy())
    assert processed.rope_delta == int(delta[0, 0])
    with torch.no_grad():
        ref = model(**inputs).logits[0].numpy()
    _, ours = llm.logits(prompt)
    error = relative_error(ours, ref)
    print(f"{len(ids[0])} tokens: max|diff|/max|logits| = {error:.1e}")
    assert error < 1e-5
    return inputs


# (frames, height, width, fps): sampled at 2 fps (8 -> 8 kept at 2 fps; 30 at 10 fps -> 6), a bare array
# (transformers' 24 fps: 5 frames -> at least 4 kept), an odd count kept (3: the last temporal patch padded)
@pytest.mark.parametrize("frames, height, width, fps", [(8, 64, 96, 2.0), (5, 90, 40, None), (30, 48, 80, 10.0),
                                                        (3, 40, 40, 24.0)])
def test_video_equals_transformers(llm, frames, height, width, fps):
    check_against_transformers(llm, chat(f"{VIDEO}What happens?"), [(clip(frames, height, width), fps)])


def test_a_bare_video_token_is_replaced_alone(llm):
    """Without its vision start/end around it the marker alone is replaced (transformers does the same)."""
    check_against_transformers(llm, chat("Look:\n<|video_pad|> then?"), [(clip(6, 50, 70), 3.0)])


@pytest.mark.parametrize("before", ["Look: ", "Look.", "x"])
def test_the_first_timestamp_is_tokenized_with_the_text_before_it(llm, before):
    """transformers tokenizes the prompt's text as a whole: " " or "." before the video merges with the first
    timestamp's "<" (vLLM tokenizes each timestamp alone and differs there)."""
    check_against_transformers(llm, chat(f"{before}{VIDEO} then?"), [(clip(6, 50, 70), 3.0)])


def test_the_join_keeps_token_ids_a_tokenizer_would_not_give():
    """Token ids given as such (not what tokenizing their text gives) are kept; the timestamp goes after them."""
    tokenizer = hf_processor().tokenizer
    join = timestamp_join(tokenizer)
    lead = tokenizer.encode("<0.2 seconds>", add_special_tokens=False)
    plain = tokenizer.encode("describe ", add_special_tokens=False)
    taken, joined = join(tuple(plain), tuple(lead))
    assert tokenizer.decode(plain[:len(plain) - taken] + list(joined)) == "describe <0.2 seconds>" and taken == 1
    spelled = tokenizer.convert_tokens_to_ids(list("describeĠ"))  # "describe " letter by letter
    assert len(spelled) > len(plain) and join(tuple(spelled), tuple(lead)) == (0, tuple(lead))


def test_images_and_videos_in_one_prompt(llm):
    """Rows are the images', then the videos' whole runs: prompt order video, image, video."""
    videos = [(clip(6, 64, 48, seed=1), 3.0), (clip(4, 40, 90, seed=2), None)]
    image = picture(70, 100, seed=3)
    check_against_transformers(llm, chat(f"{VIDEO} then {IMAGE} and {VIDEO}: same place?"), videos, [image])


def test_engine_greedy_equals_transformers(llm):
    """Through the engine (a prefill chunk ends inside the video; the second time the caches answer) the greedy
    tokens equal transformers', one full forward per token."""
    video, image = clip(6, 64, 48, seed=4), picture(90, 60, seed=5)
    text = chat(f"{IMAGE} beside {VIDEO}?")
    prompt = {"prompt": text, "multi_modal_data": {"video": video, "image": image}}
    params = mmjax.SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True)
    config = mmjax.EngineConfig(page_size=8, max_num_seqs=2, max_num_batched_tokens=32, max_model_len=512)
    outputs = mmjax.generate(llm, [prompt, prompt], params, engine_config=config, use_tqdm=False)
    inputs = transformers_inputs(text, [(video, None)], [image])
    model, want = reference(family=FAMILY)[0], []
    for _ in range(4):
        ids = torch.cat([inputs["input_ids"], torch.tensor([want], dtype=torch.long).reshape(1, -1)], dim=1)
        types = torch.cat([inputs["mm_token_type_ids"], torch.zeros((1, len(want)), dtype=torch.int)], dim=1)
        with torch.no_grad():
            logits = model(**{**inputs, "input_ids": ids, "mm_token_type_ids": types}).logits[0, -1]
        want.append(int(logits.argmax()))
    assert [list(o.token_ids) for o in outputs] == [want, want]


def test_warmup_variants_cover_the_shapes_videos_map_to(llm):
    """Every video and image (each mapped alone, as the engine encodes it) maps to one of the encoder inputs
    warm-up compiles, with a row of ``video_text_ids`` for each token of its placeholder run."""
    variants = {ModelRunner.input_key(v) for v in encoder_input_variants(InputContext(llm.model_config))}
    prompts = [
        {"prompt": VIDEO, "multi_modal_data": {"video": clip(4, 30, 30)}},
        {"prompt": VIDEO * 2, "multi_modal_data": {"video": [clip(40, 200, 300), (clip(9, 64, 64), {"fps": 1.0})]}},
        {"prompt": IMAGE + VIDEO, "multi_modal_data": {"video": clip(12, 100, 60), "image": picture(300, 200)}},
    ]
    for prompt in prompts:
        processed = llm.process(prompt)
        for modality, items in processed.mm_items.items():
            for item, run in zip(items, processed.placeholders[modality]):
                assert ModelRunner.input_key(item) in variants
                if modality == "video":
                    assert item["video_text_ids"].shape[0] >= run.length


def test_dummy_data_holds_the_most_video_tokens(llm):
    dummy = INPUT_REGISTRY.dummy_data_for_profiling(llm.model_config, 8)  # validated by the registry
    assert [r.length for r in dummy.multi_modal_placeholders["video"]] == [2048, 2048]  # the context bounds them


def test_video_input_errors_are_named(llm):
    with pytest.raises(ValueError, match=r"video 0 has dtype float32; expected uint8"):
        llm.process({"prompt": VIDEO, "multi_modal_data": {"video": np.zeros((4, 8, 8, 3), np.float32)}})
    with pytest.raises(ValueError, match=r"1 video placeholder token.*but 2 video\(s\) were given"):
        llm.process({"prompt": VIDEO, "multi_modal_data": {"video": [clip(4, 32, 32), clip(4, 32, 32)]}})
    with pytest.raises(ValueError, match=r"video_max_pixels=\d+ is above the model's video budget"):
        llm.process({"prompt": VIDEO, "multi_modal_data": {"video": clip(4, 32, 32)},
                     "mm_processor_kwargs": {"video_max_pixels": 10**9}})
    with pytest.raises(ValueError, match=r"video 1: a Qwen3-VL video needs at least temporal_patch_size=2 frames"):
        llm.process({"prompt": VIDEO * 2, "multi_modal_data": {"video": [clip(4, 32, 32), clip(1, 32, 32)]}})
    with pytest.raises(ValueError, match=r"video 0: its frame at [0-9.]+ seconds is past the longest timestamp"):
        llm.process({"prompt": VIDEO, "multi_modal_data": {"video": (clip(4, 32, 32), {"fps": 1e-5})}})


def test_fine_tuning_loss_and_gradients_equal_transformers(llm):
    """``mmjax.train``'s loss on a video example (its rows as the engine reads them, timestamps' rows included)
    and on a text one, and the gradients of the merger and of the token embeddings, equal transformers'."""
    video = clip(6, 64, 48, seed=6)
    prompt = {"prompt": chat(f"{VIDEO}What moves?"), "multi_modal_data": {"video": (video, {"fps": 3.0})}}
    examples = [TrainExample(prompt, "a cat"), TrainExample(chat("Say hello."), "hello there")]
    batch = collate(llm, examples, batch_size=2)
    split = ParamSplit.build(llm.state, "projector", {"projector": ("visual/merger/", "language_model/embed_tokens/")})
    params, frozen = split.split(llm.state)
    loss, grads = jax.value_and_grad(objective(llm.graphdef, split, None))(params, frozen, batch)
    model = reference(family=FAMILY)[0]
    model.zero_grad()
    inputs = transformers_inputs(chat(f"{VIDEO}What moves?"), [(video, 3.0)])
    ids = torch.tensor(np.asarray(batch.input_ids), dtype=torch.long)
    labels = torch.tensor(np.where(np.asarray(batch.labels) >= 0, np.asarray(batch.labels), -100), dtype=torch.long)
    types = (ids == model.config.video_token_id).int() * 2
    out = model(input_ids=ids, attention_mask=torch.tensor(np.asarray(batch.positions) >= 0, dtype=torch.long),
                mm_token_type_ids=types, pixel_values_videos=inputs["pixel_values_videos"],
                video_grid_thw=inputs["video_grid_thw"], labels=labels)
    out.loss.backward()
    assert float(loss) == pytest.approx(float(out.loss.detach()), rel=1e-5)
    by_path = dict(zip((split.paths[i] for i in split.trained), grads))
    embed = model.model.language_model.embed_tokens.weight.grad
    for ours, theirs in (("visual/merger/linear_fc1/kernel", model.model.visual.merger.linear_fc1.weight.grad.T),
                         ("language_model/embed_tokens/embedding", embed)):
        want = theirs.numpy()
        assert np.abs(want).max() > 0
        np.testing.assert_allclose(np.asarray(by_path[ours]), want, atol=1e-4 * np.abs(want).max(), rtol=1e-3)
