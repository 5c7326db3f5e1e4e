"""Fine-tuning Qwen-VL with ``mmjax.train``'s loss: the target-only loss and the merger's gradients equal
transformers' on a batch of examples with different image counts and sizes (and a padding row)."""

from __future__ import annotations

import jax
import numpy as np
import pytest
import torch

from mmjax.training import TrainExample
from mmjax.training.examples import collate
from mmjax.training.params import ParamSplit
from mmjax.training.trainer import objective
from tiny_qwen import FAMILIES, IMAGE, chat, loaded, picture, reference

EXAMPLES = [
    TrainExample({"prompt": chat(f"Which is larger, {IMAGE} or this?", images=1),
                  "multi_modal_data": {"image": [picture(90, 60, seed=11), picture(40, 120, seed=12)]}},
                 "the first one"),
    TrainExample(chat("Say hello."), "hello there"),
    TrainExample({"prompt": chat("What is it?", images=1), "multi_modal_data": {"image": picture(70, 70, seed=13)}},
                 "a square"),
]


def _torch_loss_and_merger_grads(family, batch) -> tuple[float, dict]:
    model, processor = reference(family=family)
    model.zero_grad()
    images = []
    for example in EXAMPLES:
        given = example.prompt["multi_modal_data"]["image"] if isinstance(example.prompt, dict) else []
        images += given if isinstance(given, list) else [given]
    pixels = processor(images=images, return_tensors="pt")
    real = len(EXAMPLES)  # transformers' get_rope_index cannot take a row that is all padding: ours scores nothing
    ids = torch.tensor(np.asarray(batch.input_ids)[:real], dtype=torch.long)
    labels = np.where(np.asarray(batch.labels) >= 0, np.asarray(batch.labels), -100)[:real]
    mask = torch.tensor(np.asarray(batch.positions)[:real] >= 0, dtype=torch.long)
    out = model(input_ids=ids, attention_mask=mask,
                mm_token_type_ids=(ids == model.config.image_token_id).int(), pixel_values=pixels["pixel_values"],
                image_grid_thw=pixels["image_grid_thw"], labels=torch.tensor(labels, dtype=torch.long))
    out.loss.backward()
    grads = {name: p.grad.numpy().copy() for name, p in model.named_parameters()
             if p.grad is not None and ".merger." in name}
    return float(out.loss.detach()), grads


@pytest.mark.parametrize("family", FAMILIES)
def test_loss_and_merger_gradients_equal_transformers(family):
    llm = loaded(family=family)
    batch = collate(llm, EXAMPLES, batch_size=4)  # a padding row too
    split = ParamSplit.build(llm.state, "projector", {"projector": ("visual/merger/",)})
    params, frozen = split.split(llm.state)
    loss, grads = jax.value_and_grad(objective(llm.graphdef, split, None))(params, frozen, batch)
    want_loss, want_grads = _torch_loss_and_merger_grads(family, batch)
    assert float(loss) == pytest.approx(want_loss, rel=1e-5)
    by_path = dict(zip((split.paths[i] for i in split.trained), grads))
    fc1 = "visual/merger/fc1/kernel" if family == "qwen2_5_vl" else "visual/merger/linear_fc1/kernel"
    theirs = next(n for n in want_grads if n.endswith(("merger.mlp.0.weight", "merger.linear_fc1.weight"))
                  and "deepstack" not in n)
    want = want_grads[theirs].T  # nnx kernels are [in, out], torch weights [out, in]
    assert np.abs(want).max() > 0
    np.testing.assert_allclose(np.asarray(by_path[fc1]), want, atol=1e-4 * np.abs(want).max(), rtol=1e-3)
