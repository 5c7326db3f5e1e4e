"""ImagePlugin's default mapper: the checkpoint's HF image processor, numpy out, clear errors."""

import io

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from mmjax.registry import MULTIMODAL_REGISTRY, ModelConfig
from toy_vlm import IMAGE_SIZE, ToyVLM

CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073])
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711])


def test_solid_color_image_matches_the_normalisation_formula(model_config):
    """Resize and crop keep a solid colour; the value must be (c / 255 - mean) / std."""
    color = np.array([200, 30, 90])
    image = Image.new("RGB", (70, 45), tuple(int(c) for c in color))
    pixels = MULTIMODAL_REGISTRY.map_input(model_config, {"image": image})["pixel_values"]
    assert isinstance(pixels, np.ndarray) and pixels.dtype == np.float32
    assert pixels.shape == (1, 3, IMAGE_SIZE, IMAGE_SIZE)
    expected = (color / 255 - CLIP_MEAN) / CLIP_STD
    np.testing.assert_allclose(pixels[0].mean(axis=(1, 2)), expected, atol=1e-5)
    np.testing.assert_allclose(pixels[0].std(axis=(1, 2)), 0, atol=1e-5)


def test_real_photo_is_center_cropped_after_shortest_side_resize(model_config, photo):
    """Compare with an independent PIL pipeline: bicubic resize of the short side, centre crop."""
    wide = photo.crop((0, 100, 512, 356))  # 512x256: crop must cut the sides
    pixels = MULTIMODAL_REGISTRY.map_input(model_config, {"image": wide})["pixel_values"][0]
    scale = IMAGE_SIZE / 256
    resized = wide.resize((round(512 * scale), IMAGE_SIZE), Image.BICUBIC)
    left = (resized.width - IMAGE_SIZE) // 2
    crop = np.asarray(resized.crop((left, 0, left + IMAGE_SIZE, IMAGE_SIZE)), np.float64)
    expected = ((crop / 255 - CLIP_MEAN) / CLIP_STD).transpose(2, 0, 1)
    # PIL's and transformers' bicubic resamplers round differently: a couple of grey levels.
    assert np.abs(pixels - expected).mean() < 0.02
    assert np.corrcoef(pixels.ravel(), expected.ravel())[0, 1] > 0.999


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "P", "CMYK"])
def test_image_modes_become_three_channels(model_config, photo, mode):
    pixels = MULTIMODAL_REGISTRY.map_input(model_config, {"image": photo.convert(mode)})["pixel_values"]
    assert pixels.shape == (1, 3, IMAGE_SIZE, IMAGE_SIZE) and np.isfinite(pixels).all()


def test_a_list_of_images_is_one_batch(checkpoint_dir, photo):
    config = ModelConfig.from_pretrained(checkpoint_dir, model_cls=ToyVLM, limit_mm_per_prompt={"image": 3})
    images = [photo, photo.resize((100, 40)), Image.new("RGB", (31, 77), (1, 2, 3))]
    pixels = MULTIMODAL_REGISTRY.map_input(config, {"image": images})["pixel_values"]
    assert pixels.shape == (3, 3, IMAGE_SIZE, IMAGE_SIZE)
    single = MULTIMODAL_REGISTRY.map_input(config, {"image": images[1]})["pixel_values"]
    np.testing.assert_array_equal(pixels[1], single[0])


def test_arrays_pass_through_as_image_embeds(checkpoint_dir):
    config = ModelConfig.from_pretrained(checkpoint_dir, model_cls=ToyVLM, limit_mm_per_prompt={"image": 2})
    embeds = np.random.default_rng(0).normal(size=(25, 16)).astype(np.float32)
    out = MULTIMODAL_REGISTRY.map_input(config, {"image": embeds})
    assert set(out) == {"image_embeds"} and out["image_embeds"] is embeds
    out = MULTIMODAL_REGISTRY.map_input(config, {"image": [embeds, jnp.asarray(embeds)]})
    assert isinstance(out["image_embeds"], list) and len(out["image_embeds"]) == 2


@pytest.mark.parametrize("bad", ["cat.png", b"\x89PNG", 3, {"url": "x"}, ["x"], (Image.new("RGB", (4, 4)),)])
def test_unsupported_image_data_is_a_type_error(model_config, bad):
    with pytest.raises(TypeError, match="invalid image data of type .*expected a PIL.Image.Image"):
        MULTIMODAL_REGISTRY.map_input(model_config, {"image": bad})


def test_corrupt_image_bytes_are_a_clear_error(model_config, photo):
    buffer = io.BytesIO()
    photo.save(buffer, format="PNG")
    truncated = Image.open(io.BytesIO(buffer.getvalue()[:2000]))  # header fine, data cut
    with pytest.raises(ValueError, match="image 0 could not be decoded"):
        MULTIMODAL_REGISTRY.map_input(model_config, {"image": truncated})


def test_zero_size_image_is_refused(model_config):
    with pytest.raises(ValueError, match=r"image 0 has zero size \(0x5\)"):
        MULTIMODAL_REGISTRY.map_input(model_config, {"image": Image.new("RGB", (0, 5))})


def test_empty_list_is_refused(model_config):
    with pytest.raises(ValueError, match="empty list of image items"):
        MULTIMODAL_REGISTRY.map_input(model_config, {"image": []})


def test_processor_kwargs_reach_the_image_processor_and_the_request_wins(checkpoint_dir):
    image = Image.new("RGB", (40, 40), (255, 0, 0))
    config = ModelConfig.from_pretrained(checkpoint_dir, model_cls=ToyVLM,
                                         mm_processor_kwargs={"do_normalize": False})
    raw = MULTIMODAL_REGISTRY.map_input(config, {"image": image})["pixel_values"]
    np.testing.assert_allclose(raw[0, :, 0, 0], [1.0, 0.0, 0.0], atol=1e-6)  # rescaled only
    normalized = MULTIMODAL_REGISTRY.map_input(config, {"image": image}, {"do_normalize": True})["pixel_values"]
    np.testing.assert_allclose(normalized[0, :, 0, 0], (np.array([1, 0, 0]) - CLIP_MEAN) / CLIP_STD, atol=1e-5)


def test_unknown_processor_kwargs_are_dropped_with_a_warning(model_config, photo):
    with pytest.warns(UserWarning,
                      match=r"mm_processor_kwargs \['num_crops'\] are not accepted by any multimodal hook of ToyVLM"):
        out = MULTIMODAL_REGISTRY.map_input(model_config, {"image": photo}, {"num_crops": 4})
    assert out["pixel_values"].shape == (1, 3, IMAGE_SIZE, IMAGE_SIZE)


def test_missing_image_processor_config_is_a_clear_error(tmp_path, model_config, photo):
    import dataclasses

    (tmp_path / "config.json").write_text(model_config.hf_config.to_json_string())
    config = dataclasses.replace(model_config, model=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="could not load an image processor config"):
        MULTIMODAL_REGISTRY.map_input(config, {"image": photo})
