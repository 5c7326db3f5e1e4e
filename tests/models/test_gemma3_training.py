"""Fine-tuning Gemma 3 with ``mmjax.train``'s loss: the target-only loss and the projector's gradients equal
transformers' (which it computes with each image's soft tokens attending both ways) on a batch of examples
with two, none and one image (and a padding row); a causal-only mask would give another loss."""

from __future__ import annotations

import jax
import numpy as np
import pytest
import torch

import mmjax
from mmjax.training import TrainExample
from mmjax.training.examples import collate
from mmjax.training.params import ParamSplit
from mmjax.training.trainer import objective
from tiny_gemma3 import chat, checkpoint, hf_processor, picture, reference

EXAMPLES = [
    TrainExample({"prompt": chat("Which of the two is larger?", images=2),
                  "multi_modal_data": {"image": [picture(90, 60, seed=11), picture(40, 120, seed=12)]}},
                 "the first one"),
    TrainExample(chat("Say hello to everyone in the room, one by one."), "hello there"),
    TrainExample({"prompt": chat("What is it?", images=1), "multi_modal_data": {"image": picture(70, 70, seed=13)}},
                 "a square"),
]


def _torch_loss_and_projector_grad(batch, bidirectional: bool = True) -> tuple[float, np.ndarray]:
    model = reference()
    model.zero_grad()
    images = []
    for example in EXAMPLES:
        given = example.prompt["multi_modal_data"]["image"] if isinstance(example.prompt, dict) else []
        images += given if isinstance(given, list) else [given]
    pixels = hf_processor().image_processor(images=images, return_tensors="pt")["pixel_values"]
    real = len(EXAMPLES)
    ids = torch.tensor(np.asarray(batch.input_ids)[:real], dtype=torch.long)
    labels = np.where(np.asarray(batch.labels) >= 0, np.asarray(batch.labels), -100)[:real]
    mask = torch.tensor(np.asarray(batch.positions)[:real] >= 0, dtype=torch.long)
    kwargs = {"token_type_ids": (ids == model.config.image_token_id).long()} if bidirectional else {}
    out = model(input_ids=ids, attention_mask=mask, pixel_values=pixels, labels=torch.tensor(labels, dtype=torch.long),
                **kwargs)
    out.loss.backward()
    grad = model.model.multi_modal_projector.mm_input_projection_weight.grad.numpy().copy()
    return float(out.loss.detach()), grad


def test_loss_and_projector_gradients_equal_transformers():
    llm = mmjax.load(checkpoint(), limit_mm_per_prompt={"image": 2})
    batch = collate(llm, EXAMPLES, batch_size=4)  # a padding row too
    split = ParamSplit.build(llm.state, "projector", {"projector": ("multi_modal_projector/",)})
    params, frozen = split.split(llm.state)
    loss, grads = jax.value_and_grad(objective(llm.graphdef, split, None))(params, frozen, batch)
    want_loss, want = _torch_loss_and_projector_grad(batch)
    assert float(loss) == pytest.approx(want_loss, rel=1e-5)
    causal_loss, _ = _torch_loss_and_projector_grad(batch, bidirectional=False)
    assert abs(causal_loss - want_loss) > 1e-4  # the images' both-ways attention matters to the loss
    by_path = dict(zip((split.paths[i] for i in split.trained), grads))
    got = np.asarray(by_path["multi_modal_projector/mm_input_projection_weight"])
    assert np.abs(want).max() > 0
    np.testing.assert_allclose(got, want, atol=1e-4 * np.abs(want).max(), rtol=1e-3)
