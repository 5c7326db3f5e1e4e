"""Registration decorators: frozen hooks on the class, no global state, clear errors."""

import dataclasses
import warnings
from types import MappingProxyType

import pytest
from flax import nnx

from mmjax.registry import (
    INPUT_REGISTRY,
    MULTIMODAL_REGISTRY,
    ModelHooks,
    SupportsMultiModal,
    hooks_of,
    supports_multimodal,
)
from mmjax.registry.hooks import DEFAULT
from toy_vlm import ToyVLM, dummy_data, expand_image_tokens, image_token_count


def test_toy_model_carries_every_hook():
    hooks = hooks_of(ToyVLM)
    assert isinstance(hooks, ModelHooks)
    assert hooks.input_mappers["image"] is DEFAULT
    assert hooks.max_mm_tokens["image"] is image_token_count
    assert hooks.dummy_data_factory is dummy_data
    assert hooks.input_processor is expand_image_tokens
    assert supports_multimodal(ToyVLM) and supports_multimodal(ToyVLM(rngs=nnx.Rngs(0)))


def test_hooks_are_frozen():
    hooks = hooks_of(ToyVLM)
    with pytest.raises(dataclasses.FrozenInstanceError):
        hooks.input_processor = None  # type: ignore[misc]
    assert isinstance(hooks.input_mappers, MappingProxyType)
    with pytest.raises(TypeError):
        hooks.input_mappers["audio"] = DEFAULT  # type: ignore[index]


def test_registering_on_a_subclass_leaves_the_parent_unchanged():
    before = hooks_of(ToyVLM)

    @MULTIMODAL_REGISTRY.register_max_image_tokens(7)
    class Child(ToyVLM):
        pass

    assert hooks_of(Child).max_mm_tokens["image"] == 7
    assert hooks_of(Child).input_processor is expand_image_tokens  # inherited
    assert hooks_of(ToyVLM) is before
    assert hooks_of(ToyVLM).max_mm_tokens["image"] is image_token_count


def test_a_class_without_registrations_has_empty_hooks():
    class Plain(nnx.Module, SupportsMultiModal):
        pass

    assert hooks_of(Plain) == ModelHooks()


def test_multimodal_registration_requires_supports_multimodal():
    with pytest.raises(TypeError, match="TextOnly.*does not declare SupportsMultiModal"):
        @MULTIMODAL_REGISTRY.register_image_input_mapper()
        class TextOnly(nnx.Module):
            pass


def test_input_registry_accepts_text_only_models():
    def factory(ctx, seq_len, mm_counts):
        raise AssertionError("not called")

    @INPUT_REGISTRY.register_dummy_data(factory)
    class TextOnly(nnx.Module):
        pass

    assert hooks_of(TextOnly).dummy_data_factory is factory


@pytest.mark.parametrize("bad", [0, -3, 2.5, "576", True])
def test_max_tokens_must_be_a_positive_int(bad):
    with pytest.raises(ValueError, match=rf"max image tokens for BadCount must be an int >= 1.*got {bad!r}"):
        @MULTIMODAL_REGISTRY.register_max_image_tokens(bad)
        class BadCount(nnx.Module, SupportsMultiModal):
            pass


def test_non_callable_hooks_are_refused():
    with pytest.raises(TypeError, match="input mapper must be callable"):
        MULTIMODAL_REGISTRY.register_image_input_mapper("not a function")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="dummy data factory must be callable"):
        INPUT_REGISTRY.register_dummy_data(42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="input processor must be callable"):
        INPUT_REGISTRY.register_input_processor(None)  # type: ignore[arg-type]


def test_decorating_a_non_class_is_refused():
    with pytest.raises(TypeError, match="decorates a model class"):
        MULTIMODAL_REGISTRY.register_image_input_mapper()(lambda: None)


def test_registering_twice_on_one_class_warns_and_replaces():
    class Model(nnx.Module, SupportsMultiModal):
        pass

    MULTIMODAL_REGISTRY.register_max_image_tokens(3)(Model)
    with pytest.warns(UserWarning, match="Model already has a max token count for 'image'; the new one replaces it"):
        MULTIMODAL_REGISTRY.register_max_image_tokens(5)(Model)
    assert hooks_of(Model).max_mm_tokens["image"] == 5


def test_overriding_an_inherited_hook_does_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")

        @MULTIMODAL_REGISTRY.register_max_image_tokens(9)
        class Child(ToyVLM):
            pass

    assert hooks_of(Child).max_mm_tokens["image"] == 9


def test_unknown_modality_in_registration():
    with pytest.raises(KeyError, match=r"no multimodal plugin handles 'point_cloud'; known modalities: "
                                       r"\['audio', 'image', 'video'\]"):
        MULTIMODAL_REGISTRY.register_input_mapper("point_cloud")
