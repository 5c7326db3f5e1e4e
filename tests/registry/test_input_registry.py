"""InputRegistry: dummy data for profiling and input processors, validated against max tokens."""

import dataclasses

import pytest
from PIL import Image

from mmjax.registry import (
    INPUT_REGISTRY,
    MULTIMODAL_REGISTRY,
    DecoderOnlyInputs,
    DummyData,
    ModelConfig,
    PlaceholderRange,
)
from toy_vlm import ToyVLM, dummy_data, expand_image_tokens

TOKENS = 25


def config_for(checkpoint_dir, cls, **kwargs) -> ModelConfig:
    return ModelConfig.from_pretrained(checkpoint_dir, model_cls=cls, **kwargs)


def test_dummy_data_holds_the_worst_case(checkpoint_dir):
    config = config_for(checkpoint_dir, ToyVLM, limit_mm_per_prompt={"image": 3})
    dummy = INPUT_REGISTRY.dummy_data_for_profiling(config, seq_len=100)
    assert len(dummy.prompt_token_ids) == 100
    assert len(dummy.multi_modal_data["image"]) == 3
    assert sum(r.length for r in dummy.multi_modal_placeholders["image"]) == \
        MULTIMODAL_REGISTRY.get_max_multimodal_tokens(config) == 3 * TOKENS


def test_default_dummy_data_is_text_only(checkpoint_dir):
    from flax import nnx

    class TextOnly(nnx.Module):
        pass

    dummy = INPUT_REGISTRY.dummy_data_for_profiling(config_for(checkpoint_dir, TextOnly), seq_len=7)
    assert dummy.prompt_token_ids == (0,) * 7 and not dummy.multi_modal_data


def test_multimodal_model_without_a_dummy_factory_is_caught(checkpoint_dir):
    from flax import nnx

    from mmjax.registry import SupportsMultiModal

    @MULTIMODAL_REGISTRY.register_max_image_tokens(25)
    class NoDummy(nnx.Module, SupportsMultiModal):
        pass

    with pytest.raises(ValueError, match=r"NoDummy .*at least 1 dummy 'image' items .*has 0"):
        INPUT_REGISTRY.dummy_data_for_profiling(config_for(checkpoint_dir, NoDummy), seq_len=7)


def test_too_few_dummy_tokens(checkpoint_dir):
    @INPUT_REGISTRY.register_dummy_data(lambda ctx, seq_len, mm_counts: dummy_data(ctx, 0, mm_counts))
    class Short(ToyVLM):
        pass

    with pytest.raises(ValueError, match=r"Short .*expected at least 100 dummy tokens .*returned 25"):
        INPUT_REGISTRY.dummy_data_for_profiling(config_for(checkpoint_dir, Short), seq_len=100)


def test_too_few_dummy_items(checkpoint_dir):
    @INPUT_REGISTRY.register_dummy_data(lambda ctx, seq_len, mm_counts: dummy_data(ctx, seq_len, {"image": 1}))
    class OneImage(ToyVLM):
        pass

    config = config_for(checkpoint_dir, OneImage, limit_mm_per_prompt={"image": 2})
    with pytest.raises(ValueError, match=r"OneImage .*at least 2 dummy 'image' items .*has 1"):
        INPUT_REGISTRY.dummy_data_for_profiling(config, seq_len=64)


def test_dummy_with_fewer_tokens_than_max(checkpoint_dir):
    def small(ctx, seq_len, mm_counts):
        image = Image.new("RGB", (30, 30))
        return DummyData(prompt_token_ids=[383] * 10 + [0] * seq_len, multi_modal_data={"image": [image]},
                         multi_modal_placeholders={"image": [PlaceholderRange(0, 10)]})

    @INPUT_REGISTRY.register_dummy_data(small)
    class Small(ToyVLM):
        pass

    with pytest.raises(ValueError, match=r"Small .*must hold 1 x 25 = 25 image tokens .*placeholders hold 10"):
        INPUT_REGISTRY.dummy_data_for_profiling(config_for(checkpoint_dir, Small), seq_len=64)


def test_dummy_factory_must_return_dummy_data(checkpoint_dir):
    @INPUT_REGISTRY.register_dummy_data(lambda ctx, seq_len, mm_counts: ([0] * seq_len, None))
    class Tuple(ToyVLM):
        pass

    with pytest.raises(TypeError, match="dummy data factory of Tuple .*returned tuple, expected DummyData"):
        INPUT_REGISTRY.dummy_data_for_profiling(config_for(checkpoint_dir, Tuple), seq_len=8)


def inputs(ids, images=None, **kwargs) -> DecoderOnlyInputs:
    data = {} if images is None else {"image": images}
    return DecoderOnlyInputs(prompt_token_ids=ids, multi_modal_data=data, **kwargs)


def test_input_processor_expands_markers_and_records_ranges(model_config):
    image = Image.new("RGB", (8, 8))
    out = INPUT_REGISTRY.process_input(model_config, inputs([1, 5, 383, 7], image))
    assert out.prompt_token_ids == (1, 5) + (383,) * TOKENS + (7,)
    assert out.multi_modal_placeholders["image"] == (PlaceholderRange(2, TOKENS),)


def test_input_processor_is_identity_when_none_is_registered(checkpoint_dir):
    from flax import nnx

    from mmjax.registry import SupportsMultiModal

    class NoProcessor(nnx.Module, SupportsMultiModal):
        pass

    before = inputs([1, 2, 3])
    assert INPUT_REGISTRY.process_input(config_for(checkpoint_dir, NoProcessor), before) is before


def processor_returning(ranges):
    def processor(ctx, inputs):
        return dataclasses.replace(inputs, multi_modal_placeholders={"image": ranges})
    return processor


@pytest.mark.parametrize("ranges, message", [
    ((PlaceholderRange(0, 30),),
     r"image item 0 has 30 placeholder tokens, but the model's max image tokens per item is 25"),
    ((PlaceholderRange(0, 5), PlaceholderRange(5, 5)), r"1 image item\(s\) but 2 placeholder range\(s\)"),
    ((PlaceholderRange(38, 5),), r"placeholders \[38, 43\) .*outside the 40 prompt tokens"),
    ((PlaceholderRange(0, 0),), r"has 0 placeholder tokens.*at least 1"),
])
def test_input_processor_output_is_validated(checkpoint_dir, ranges, message):
    @INPUT_REGISTRY.register_input_processor(processor_returning(ranges))
    class Wrong(ToyVLM):
        pass

    with pytest.raises(ValueError, match=message):
        INPUT_REGISTRY.process_input(config_for(checkpoint_dir, Wrong), inputs([0] * 40, Image.new("RGB", (4, 4))))


def test_overlapping_placeholders_are_refused(checkpoint_dir):
    @INPUT_REGISTRY.register_input_processor(processor_returning((PlaceholderRange(0, 5), PlaceholderRange(3, 5))))
    class Overlap(ToyVLM):
        pass

    config = config_for(checkpoint_dir, Overlap, limit_mm_per_prompt={"image": 2})
    with pytest.raises(ValueError, match=r"image item 1 placeholders \[3, 8\) overlap"):
        INPUT_REGISTRY.process_input(config, inputs([0] * 40, [Image.new("RGB", (4, 4))] * 2))


def test_processor_that_records_no_placeholders(checkpoint_dir):
    @INPUT_REGISTRY.register_input_processor(lambda ctx, inputs: inputs)
    class Forgetful(ToyVLM):
        pass

    with pytest.raises(ValueError, match=r"input processor of Forgetful .*recorded no placeholders for the 1 image"):
        INPUT_REGISTRY.process_input(config_for(checkpoint_dir, Forgetful), inputs([0] * 4, Image.new("RGB", (4, 4))))


def test_processor_kwargs_filtered_and_request_wins(checkpoint_dir):
    seen = []

    def processor(ctx, inputs, *, repeat: int = 1):
        seen.append(repeat)
        return expand_image_tokens(ctx, inputs)

    @INPUT_REGISTRY.register_input_processor(processor)
    class Kw(ToyVLM):
        pass

    config = config_for(checkpoint_dir, Kw, mm_processor_kwargs={"repeat": 2, "unused": 1})
    with pytest.warns(UserWarning, match=r"\['unused'\] are not accepted by any multimodal hook of Kw .*'repeat'"):
        INPUT_REGISTRY.process_input(config, inputs([1], mm_processor_kwargs={"repeat": 3}))
    assert seen == [3]
