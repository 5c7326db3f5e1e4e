"""Gemma 3's forward equals transformers' (float32) on tiny checkpoints in the Hub layouts.

The checkpoints (``mmjax.testing.gemma3_checkpoints``) have a window of 8 and both kinds of layers, so the
prompts here run over several windows; each image's 16 soft tokens attend to each other. The reference is
transformers' own model on the same files, given ``token_type_ids`` as its processor returns them.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.models.common.family import load_checkpoint
from mmjax.models.gemma3 import GEMMA3, GEMMA3_TEXT
from mmjax.testing.gemma3_checkpoints import make_tiny_gemma3_checkpoint, make_tiny_gemma3_text_checkpoint
from mmjax.testing.gemma3_specs import TinyGemma3Spec

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

SPEC = TinyGemma3Spec()
IDS = SPEC.token_ids


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    return make_tiny_gemma3_checkpoint(tmp_path_factory.mktemp("gemma3"), seed=3)


@pytest.fixture(scope="module")
def models(checkpoint):
    reference = transformers.Gemma3ForConditionalGeneration.from_pretrained(checkpoint, dtype=torch.float32).eval()
    ours, _ = load_checkpoint(GEMMA3, checkpoint)
    return ours, reference


def image_run() -> list[int]:
    return [IDS.boi] + [IDS.image_soft] * SPEC.mm_tokens_per_image + [IDS.eoi]


def text(rng: np.random.Generator, n: int) -> list[int]:
    return list(rng.integers(IDS.start_of_turn + 8, IDS.boi, n))  # ordinary pieces


def reference_logits(reference, ids: np.ndarray, pixels: np.ndarray | None, bidirectional: bool = True):
    kwargs = {"input_ids": torch.tensor(ids)}
    if pixels is not None:
        kwargs["pixel_values"] = torch.tensor(pixels)
        if bidirectional:
            kwargs["token_type_ids"] = torch.tensor((ids == IDS.image_soft).astype(np.int64))
    with torch.no_grad():
        return reference(**kwargs).logits.numpy()


def our_logits(model, ids: np.ndarray, pixels: np.ndarray | None = None) -> np.ndarray:
    positions = np.broadcast_to(np.arange(ids.shape[1]), ids.shape)
    args = (jnp.asarray(ids, jnp.int32), jnp.asarray(positions, jnp.int32))
    return np.asarray(model(*args) if pixels is None else model(*args, jnp.asarray(pixels)))


def test_two_images_over_several_windows_equal_transformers(models):
    ours, reference = models
    rng = np.random.default_rng(0)
    ids = np.array([[IDS.bos, *text(rng, 9), *image_run(), *text(rng, 7), *image_run(), *text(rng, 12)]])
    pixels = rng.standard_normal((2, 3, SPEC.image_size, SPEC.image_size)).astype(np.float32)
    want = reference_logits(reference, ids, pixels)
    got = our_logits(ours, ids, pixels)
    assert ids.shape[1] > 5 * SPEC.sliding_window
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)
    # The test can fail: a causal-only mask inside the images gives other logits.
    causal = reference_logits(reference, ids, pixels, bidirectional=False)
    assert np.abs(causal - want).max() > 1e-2


def test_text_prompt_over_several_windows_equals_transformers(models):
    ours, reference = models
    ids = np.array([[IDS.bos, *text(np.random.default_rng(1), 40)]])
    np.testing.assert_allclose(our_logits(ours, ids), reference_logits(reference, ids, None), atol=1e-4, rtol=1e-4)


def test_text_only_checkpoint_equals_transformers(tmp_path):
    path = make_tiny_gemma3_text_checkpoint(tmp_path, seed=5, text_config={"final_logit_softcapping": 3.0})
    reference = transformers.Gemma3ForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    ours, _ = load_checkpoint(GEMMA3_TEXT, path)
    ids = np.array([[IDS.bos, *text(np.random.default_rng(2), 30)]])
    with torch.no_grad():
        want = reference(input_ids=torch.tensor(ids)).logits.numpy()
    assert np.abs(want).max() < 3.0  # the soft cap is applied (and would be missed otherwise)
    np.testing.assert_allclose(our_logits(ours, ids), want, atol=1e-4, rtol=1e-4)


def test_pan_and_scan_on_a_wide_image_equals_transformers(tmp_path):
    """A wide image cut into crops (transformers' processor, its settings given explicitly: it does not read
    them from the file) through mmjax's user path: the same ids and float32 logits."""
    import mmjax
    from PIL import Image

    settings = {"do_pan_and_scan": True, "pan_and_scan_min_crop_size": 16, "pan_and_scan_max_num_crops": 3,
                "pan_and_scan_min_ratio_to_activate": 1.2}
    path = make_tiny_gemma3_checkpoint(tmp_path, seed=7, processor=settings)
    image = Image.fromarray(np.random.default_rng(3).integers(0, 256, (20, 90, 3), dtype=np.uint8))
    prompt = "<bos><start_of_turn>user\n<start_of_image>What do the crops show?<end_of_turn>\n<start_of_turn>model\n"
    llm = mmjax.load(path)
    ids, ours = llm.logits({"prompt": prompt, "multi_modal_data": {"image": image}})
    inputs = transformers.AutoProcessor.from_pretrained(path)(text=prompt, images=[image], return_tensors="pt",
                                                               **settings)
    assert int(inputs["pixel_values"].shape[0]) == 4  # the whole image and three crops
    assert list(ids) == inputs["input_ids"][0].tolist()
    reference = transformers.Gemma3ForConditionalGeneration.from_pretrained(path, dtype=torch.float32).eval()
    with torch.no_grad():
        want = reference(input_ids=inputs["input_ids"], pixel_values=inputs["pixel_values"],
                         token_type_ids=inputs["token_type_ids"]).logits[0].numpy()
    np.testing.assert_allclose(ours, want, atol=1e-4, rtol=1e-4)
