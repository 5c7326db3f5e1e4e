"""Shared helpers for the LLaVA-NeXT tests: tiny checkpoints, images, prompts, both models' logits."""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile

import jax.numpy as jnp
import numpy as np
from flax import nnx
from PIL import Image

from mmjax.models.llava_next import forward
from mmjax.models.llava_next import load_llava_next
from mmjax.processing.anyres_layout import AnyresImages
from mmjax.testing.next_checkpoints import make_tiny_llava_next_checkpoint

_ROOT = tempfile.mkdtemp(prefix="mmjax-tiny-llava-next-")
atexit.register(shutil.rmtree, _ROOT, ignore_errors=True)

#: name -> make_tiny_llava_next_checkpoint overrides: a Vicuna/Llama decoder, and a
#: Mistral one with MHA, tied embeddings, two feature layers and an irregular 42/7 geometry.
VARIANTS: dict[str, dict] = {
    "vicuna": {},
    "mistral_odd_geometry": dict(
        text_model_type="mistral", num_kv_heads=5, tie_word_embeddings=True, vision_feature_layer=[-3, -1],
        image_size=42, patch_size=7, image_grid_pinpoints=((42, 126), (84, 42), (126, 126), (42, 42)), seed=1,
    ),
}  # fmt: skip

#: (height, width): six aspect ratios from 1:13 to 7.6:1, and sizes that hit every pinpoint.
SIX_SIZES = [(17, 45), (60, 31), (100, 100), (7, 90), (91, 12), (40, 53)]


@functools.cache
def checkpoint(name: str) -> str:
    return make_tiny_llava_next_checkpoint(f"{_ROOT}/{name}", **VARIANTS[name])


@functools.cache
def loaded(name: str, dtype=jnp.float32):
    return load_llava_next(checkpoint(name), dtype=dtype)


@functools.cache
def torch_model(name: str):
    from transformers import LlavaNextForConditionalGeneration

    return LlavaNextForConditionalGeneration.from_pretrained(checkpoint(name)).eval()


@functools.cache
def hf_processor(name: str):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(checkpoint(name))


def images(sizes, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in sizes]


def hf_pixels(name: str, pictures: list[Image.Image]) -> tuple[np.ndarray, np.ndarray]:
    """transformers' ``(pixel_values [N, M, C, Y, X], image_sizes [N, 2])``, M = most tiles in the batch."""
    out = hf_processor(name).image_processor(pictures, return_tensors="np")
    return np.asarray(out["pixel_values"]), np.asarray(out["image_sizes"])


def prompt_rows(image_token: int, counts_per_row: list[list[int]], seed: int = 0) -> np.ndarray:
    """Rows of random text with each image's placeholder run, right-filled with text to one length."""
    rng = np.random.default_rng(seed)
    rows = []
    for counts in counts_per_row:
        row = list(rng.integers(4, image_token, 5))
        for count in counts:
            row += [image_token] * count + list(rng.integers(4, image_token, 3))
        rows.append(row)
    length = max(map(len, rows))
    return np.array([r + list(rng.integers(4, image_token, length - len(r))) for r in rows], np.int32)


def reference_logits(name: str, input_ids, pixel_values, image_sizes) -> np.ndarray:
    import torch

    with torch.no_grad():
        out = torch_model(name)(
            input_ids=torch.from_numpy(input_ids.astype(np.int64)),
            pixel_values=torch.from_numpy(pixel_values), image_sizes=torch.from_numpy(image_sizes),
        )  # fmt: skip
    return out.logits.float().numpy()


def positions_for(input_ids: np.ndarray) -> np.ndarray:
    return np.broadcast_to(np.arange(input_ids.shape[1], dtype=np.int32), input_ids.shape)


def our_logits(model, input_ids: np.ndarray, packed: AnyresImages | None) -> np.ndarray:
    graphdef, state = nnx.split(model)
    positions = jnp.asarray(positions_for(input_ids))
    return np.asarray(forward(graphdef, state, jnp.asarray(input_ids), positions, packed))


def relative_error(got: np.ndarray, want: np.ndarray) -> float:
    """max |got - want| / max |want|: the tolerance figure the tests assert on."""
    return float(np.abs(got - want).max() / np.abs(want).max())
