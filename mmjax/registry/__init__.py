"""The multimodal input system: vLLM's registry API as immutable values and pure functions.

A vLLM user following "Enabling Multimodal Inputs" finds every name here::

    from mmjax.registry import INPUT_REGISTRY, MULTIMODAL_REGISTRY, SupportsMultiModal

    @MULTIMODAL_REGISTRY.register_image_input_mapper()
    @MULTIMODAL_REGISTRY.register_max_image_tokens(576)
    @INPUT_REGISTRY.register_dummy_data(dummy_data_for_my_model)
    @INPUT_REGISTRY.register_input_processor(input_processor_for_my_model)
    class MyModel(nnx.Module, SupportsMultiModal): ...

The decorators attach a frozen hooks value to the class instead of writing to
global state; every lookup is a function of a ``ModelConfig``.
"""

from mmjax.registry.model_registry import ModelRegistry, resolve_model_class
from mmjax.registry.audio import AudioPlugin
from mmjax.registry.config import InputContext, ModelConfig
from mmjax.registry.content_hash import hash_item
from mmjax.registry.hooks import ModelHooks, SupportsMultiModal, hooks_of, supports_multimodal
from mmjax.registry.image import ImagePlugin
from mmjax.registry.item_keys import item_key
from mmjax.registry.input_registry import INPUT_REGISTRY, DummyData, InputRegistry
from mmjax.registry.inputs import (
    BatchedTensorInputs,
    MultiModalDataBuiltins,
    MultiModalDataDict,
    MultiModalInputs,
    NestedTensors,
    PlaceholderRange,
)
from mmjax.registry.multimodal import (
    DEFAULT_PLUGINS,
    MULTIMODAL_REGISTRY,
    MultiModalRegistry,
    UnknownModalityError,
    UnsupportedModalityError,
)
from mmjax.registry.pipeline import ProcessedPrompt, process_prompt
from mmjax.registry.positions import SupportsMRoPE, supports_mrope
from mmjax.registry.plugin import MultiModalPlugin
from mmjax.registry.processor_cache import ProcessorCache
from mmjax.registry.prompts import DecoderOnlyInputs, PromptInputs, TextPrompt, TokensPrompt
from mmjax.registry.video import VideoPlugin
from mmjax.registry.video_items import VideoItem, video_items
from mmjax.registry.video_limits import VideoCeilings

__all__ = [
    "AudioPlugin",
    "BatchedTensorInputs",
    "DEFAULT_PLUGINS",
    "DecoderOnlyInputs",
    "DummyData",
    "INPUT_REGISTRY",
    "ImagePlugin",
    "InputContext",
    "InputRegistry",
    "MULTIMODAL_REGISTRY",
    "ModelConfig",
    "ModelHooks",
    "MultiModalDataBuiltins",
    "MultiModalDataDict",
    "MultiModalInputs",
    "MultiModalPlugin",
    "MultiModalRegistry",
    "NestedTensors",
    "PlaceholderRange",
    "ProcessedPrompt",
    "ProcessorCache",
    "PromptInputs",
    "SupportsMRoPE",
    "SupportsMultiModal",
    "TextPrompt",
    "TokensPrompt",
    "UnknownModalityError",
    "UnsupportedModalityError",
    "VideoCeilings",
    "VideoItem",
    "VideoPlugin",
    "hash_item",
    "hooks_of",
    "item_key",
    "process_prompt",
    "ModelRegistry",
    "resolve_model_class",
    "supports_mrope",
    "supports_multimodal",
    "video_items",
]
