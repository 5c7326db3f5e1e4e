"""Content hashes of multimodal items: equal exactly when the content is, in any process."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from mmjax.registry.content_hash import hash_item


def noise(height: int, width: int, seed: int = 0, mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    pixels = rng.integers(0, 256, (height, width, channels), dtype=np.uint8)
    return Image.fromarray(pixels[..., 0] if channels == 1 else pixels, mode)


def test_the_same_pixels_hash_the_same_whatever_the_object_or_file(tmp_path):
    image = noise(20, 30)
    image.save(tmp_path / "a.png")
    reopened = Image.open(tmp_path / "a.png")  # lazy: decoded by the hash
    assert hash_item(image) == hash_item(image.copy()) == hash_item(reopened)
    assert len(hash_item(image)) == 64  # 256 bits


def test_any_change_the_model_would_see_changes_the_hash():
    image = noise(20, 30)
    changed = image.copy()
    changed.putpixel((7, 3), tuple((c + 1) % 256 for c in image.getpixel((7, 3))))
    flat = np.asarray(image).reshape(-1)
    same_bytes_other_size = Image.fromarray(flat.reshape(30, 20, 3))
    gray = Image.fromarray(np.asarray(image)[..., 0], "L")
    palette = gray.convert("P")
    other_palette = palette.copy()
    other_palette.putpalette(bytes(reversed(palette.getpalette())))
    hashes = [hash_item(x) for x in (image, changed, same_bytes_other_size, gray, palette, other_palette,
                                      image.convert("RGBA"))]
    assert len(set(hashes)) == len(hashes)
    assert np.asarray(palette).tobytes() == np.asarray(other_palette).tobytes()  # only the palette differs


def test_arrays_hash_by_dtype_shape_and_values():
    values = np.arange(12, dtype=np.float32).reshape(3, 4)
    assert hash_item(values) == hash_item(values.copy()) == hash_item(np.asfortranarray(values))
    assert hash_item(values.T) == hash_item(np.ascontiguousarray(values.T))  # a view hashes as its values
    others = [values.reshape(4, 3), values.reshape(12), values.view(np.int32), values.astype(np.float64),
              values + np.float32(1e-6) * (np.arange(12).reshape(3, 4) == 5)]
    assert len({hash_item(values), *map(hash_item, others)}) == 1 + len(others)
    import jax.numpy as jnp

    assert hash_item(jnp.asarray(values)) == hash_item(values)


def test_audio_hashes_by_samples_and_rate_and_never_as_a_bare_array():
    samples = np.random.default_rng(1).standard_normal(800).astype(np.float32)
    assert hash_item((samples, 16000)) == hash_item((samples.copy(), 16000.0))
    assert len({hash_item((samples, 16000)), hash_item((samples, 8000)), hash_item(samples)}) == 3


def test_hashes_are_stable_across_processes():
    script = ("import numpy as np; from PIL import Image; from mmjax.registry.content_hash import hash_item; "
              "rng = np.random.default_rng(0); "
              "print(hash_item(Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8))), "
              "hash_item(np.arange(12, dtype=np.float32).reshape(3, 4)))")
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, env=env)
    assert done.stdout.split() == [hash_item(noise(20, 30)), hash_item(np.arange(12, dtype=np.float32).reshape(3, 4))]


@pytest.mark.parametrize("item, message", [
    ("a string", "type str: expected a PIL image, an array, or an audio clip"),
    (np.array([object()]), "array of dtype object"),
])
def test_what_cannot_be_hashed_is_refused_by_name(item, message):
    with pytest.raises(TypeError, match=message):
        hash_item(item)
