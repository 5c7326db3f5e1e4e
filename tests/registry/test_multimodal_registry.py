"""MultiModalRegistry: limits, max tokens, plugins, map_input dispatch."""

import dataclasses

import numpy as np
import pytest
from flax import nnx

from mmjax.registry import (
    MULTIMODAL_REGISTRY,
    InputContext,
    ModelConfig,
    MultiModalInputs,
    MultiModalPlugin,
    MultiModalRegistry,
    SupportsMultiModal,
)
from toy_vlm import IMAGE_SIZE, PATCH_SIZE, ToyVLM, hf_config

TOKENS_PER_IMAGE = (IMAGE_SIZE // PATCH_SIZE) ** 2


def with_limits(config: ModelConfig, **limits) -> ModelConfig:
    return dataclasses.replace(config, limit_mm_per_prompt=limits)


def test_limits_default_to_one_per_modality(model_config):
    assert dict(MULTIMODAL_REGISTRY.get_mm_limits_per_prompt(model_config)) == {"image": 1, "audio": 1, "video": 1}
    assert MULTIMODAL_REGISTRY.init_mm_limits_per_prompt(model_config) == \
        MULTIMODAL_REGISTRY.get_mm_limits_per_prompt(model_config)


def test_limits_come_from_the_model_config(model_config):
    limits = MULTIMODAL_REGISTRY.get_mm_limits_per_prompt(with_limits(model_config, image=4, audio=0))
    assert dict(limits) == {"image": 4, "audio": 0, "video": 1}


def test_unknown_or_invalid_limits_are_refused(model_config):
    with pytest.raises(KeyError, match="no multimodal plugin handles 'point_cloud'"):
        MULTIMODAL_REGISTRY.get_mm_limits_per_prompt(with_limits(model_config, point_cloud=1))
    with pytest.raises(ValueError, match=r"limit_mm_per_prompt\['image'\].*must be an int >= 0, got -1"):
        MULTIMODAL_REGISTRY.get_mm_limits_per_prompt(with_limits(model_config, image=-1))


def test_too_many_items_names_modality_limit_and_count(model_config, photo):
    config = with_limits(model_config, image=2)
    with pytest.raises(ValueError, match=r"ToyVLM.*at most 2 image item\(s\), but 3 were given"):
        MULTIMODAL_REGISTRY.map_input(config, {"image": [photo] * 3})


def test_limit_zero_disables_the_modality(model_config, photo):
    config = with_limits(model_config, image=0)
    with pytest.raises(ValueError, match=r"at most 0 image item\(s\) \(the modality is disabled\), but 1"):
        MULTIMODAL_REGISTRY.map_input(config, {"image": photo})
    assert MULTIMODAL_REGISTRY.get_max_multimodal_tokens(config) == 0


def test_unknown_modality_key_in_data(model_config):
    with pytest.raises(KeyError, match=r"ToyVLM .*multi_modal_data has 'point_cloud', but no plugin handles it; "
                                       r"known modalities: \['audio', 'image', 'video'\]"):
        MULTIMODAL_REGISTRY.map_input(model_config, {"point_cloud": np.zeros((2, 3, 4, 4))})


def test_data_must_be_a_dict(model_config, photo):
    with pytest.raises(TypeError, match="multi_modal_data must be a dict"):
        MULTIMODAL_REGISTRY.map_input(model_config, [photo])  # type: ignore[arg-type]


def test_max_tokens_sum_over_modalities_of_limit_times_per_item(model_config):
    assert MULTIMODAL_REGISTRY.get_max_multimodal_tokens(model_config) == TOKENS_PER_IMAGE
    config = with_limits(model_config, image=3)
    assert MULTIMODAL_REGISTRY.get_max_multimodal_tokens(config) == 3 * TOKENS_PER_IMAGE
    per_item = MULTIMODAL_REGISTRY.get_max_tokens_per_item_by_modality(config)
    assert dict(per_item) == {"image": TOKENS_PER_IMAGE, "audio": 0, "video": 0}  # nothing registered


def test_plugin_returns_zero_for_a_modality_the_model_did_not_register(model_config):
    assert MULTIMODAL_REGISTRY.plugins["audio"].get_max_multimodal_tokens(model_config) == 0


def test_max_tokens_function_sees_context_and_processor_kwargs(checkpoint_dir):
    seen = {}

    def max_tokens(ctx: InputContext, *, tiles: int = 1) -> int:
        seen["config"] = ctx.model_config
        return 10 * tiles

    @MULTIMODAL_REGISTRY.register_max_image_tokens(max_tokens)
    class Tiled(ToyVLM):
        pass

    config = ModelConfig.from_pretrained(checkpoint_dir, model_cls=Tiled, mm_processor_kwargs={"tiles": 2})
    assert MULTIMODAL_REGISTRY.get_max_multimodal_tokens(config) == 20
    assert MULTIMODAL_REGISTRY.get_max_multimodal_tokens(config, {"tiles": 5}) == 50  # request wins
    assert seen["config"] is config


@pytest.mark.parametrize("bad", [0, 2.0, None])
def test_max_tokens_function_returning_a_bad_value(checkpoint_dir, bad):
    @MULTIMODAL_REGISTRY.register_max_image_tokens(lambda ctx: bad)
    class Broken(ToyVLM):
        pass

    config = ModelConfig.from_pretrained(checkpoint_dir, model_cls=Broken)
    with pytest.raises(ValueError, match=rf"max image tokens for Broken .* must be an int >= 1.*got {bad!r}"):
        MULTIMODAL_REGISTRY.get_max_multimodal_tokens(config)


def test_default_max_tokens_when_registered_without_a_value(checkpoint_dir):
    @MULTIMODAL_REGISTRY.register_max_image_tokens()
    class Defaulted(ToyVLM):
        pass

    config = ModelConfig.from_pretrained(checkpoint_dir, model_cls=Defaulted)
    assert MULTIMODAL_REGISTRY.get_max_multimodal_tokens(config) == 3000  # vLLM's image default


def test_no_mapper_registered_is_a_key_error(checkpoint_dir, photo):
    class Bare(nnx.Module, SupportsMultiModal):
        pass

    config = ModelConfig.from_pretrained(checkpoint_dir, model_cls=Bare)
    with pytest.raises(KeyError, match="no input mapper for 'image' is registered for Bare"):
        MULTIMODAL_REGISTRY.map_input(config, {"image": photo})


def test_lookups_are_pure_functions_of_the_config(model_config, photo):
    a = MULTIMODAL_REGISTRY.map_input(model_config, {"image": photo})
    b = MULTIMODAL_REGISTRY.create_input_mapper(model_config)({"image": photo})
    np.testing.assert_array_equal(a["pixel_values"], b["pixel_values"])
    assert MULTIMODAL_REGISTRY.get_max_multimodal_tokens(model_config) == \
        MULTIMODAL_REGISTRY.get_max_multimodal_tokens(model_config)


class DepthPlugin(MultiModalPlugin):
    """Depth maps [T, Y, X, C] uint8 → pixel_values_depth [T, C, Y, X] float32."""

    def get_data_key(self) -> str:
        return "depth"

    def _default_input_mapper(self, ctx, data, **kwargs):
        if not isinstance(data, np.ndarray) or data.ndim != 4:
            raise TypeError(f"invalid depth data {type(data).__name__}")
        return MultiModalInputs(pixel_values_depth=data.transpose(0, 3, 1, 2).astype(np.float32) / 255)

    def _default_max_multimodal_tokens(self, ctx):
        return 64


def test_register_plugin_returns_a_new_registry():
    depth_registry = MULTIMODAL_REGISTRY.register_plugin(DepthPlugin())
    assert isinstance(depth_registry, MultiModalRegistry)
    assert set(depth_registry.plugins) == {"image", "audio", "video", "depth"}
    assert set(MULTIMODAL_REGISTRY.plugins) == {"image", "audio", "video"}  # unchanged


def test_a_new_modality_end_to_end(checkpoint_dir):
    depth_registry = MULTIMODAL_REGISTRY.register_plugin(DepthPlugin())

    @depth_registry.register_input_mapper("depth")
    @depth_registry.register_max_multimodal_tokens("depth")
    class DepthModel(ToyVLM):
        pass

    config = ModelConfig.from_pretrained(checkpoint_dir, model_cls=DepthModel, limit_mm_per_prompt={"depth": 2})
    frames = np.full((3, 4, 5, 3), 255, np.uint8)
    out = depth_registry.map_input(config, {"depth": frames})
    assert out["pixel_values_depth"].shape == (3, 3, 4, 5)
    np.testing.assert_allclose(out["pixel_values_depth"], 1.0)
    assert depth_registry.get_max_multimodal_tokens(config) == TOKENS_PER_IMAGE + 2 * 64
    with pytest.raises(TypeError, match="invalid depth data"):
        depth_registry.map_input(config, {"depth": "frames.mp4"})


def test_duplicate_plugin_keys_warn():
    with pytest.warns(UserWarning, match="already registered for 'image'"):
        again = type(MULTIMODAL_REGISTRY.plugins["image"])()
        MultiModalRegistry(plugins=[*MULTIMODAL_REGISTRY.plugins.values(), again])


def test_model_class_is_resolved_from_the_architecture_name():
    with pytest.raises(ValueError, match=r"no implementation of architectures \['ToyVLM'\].*model_cls="):
        ModelConfig(hf_config=hf_config())
