"""The architecture table: each Hugging Face ``architectures`` name mmjax serves, and its family.

Adding a model family is one package under ``mmjax/models/`` and one line here.
Importing this module registers every family's model class with the registry's
``ModelRegistry``, so ``ModelConfig`` resolves it from ``config.json`` alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from flax import nnx
from transformers import PretrainedConfig

from mmjax.models.common.family import ModelFamily
from mmjax.models.gemma3 import GEMMA3, GEMMA3_TEXT
from mmjax.models.llava import LLAVA
from mmjax.models.llava_next import LLAVA_NEXT
from mmjax.models.qwen2_5_vl import QWEN2_5_VL
from mmjax.models.qwen3_vl import QWEN3_VL
from mmjax.registry.model_registry import ModelRegistry

ARCHITECTURES: Mapping[str, ModelFamily] = MappingProxyType({
    "LlavaForConditionalGeneration": LLAVA,
    "LlavaNextForConditionalGeneration": LLAVA_NEXT,
    "Qwen2_5_VLForConditionalGeneration": QWEN2_5_VL,
    "Qwen3VLForConditionalGeneration": QWEN3_VL,
    "Gemma3ForConditionalGeneration": GEMMA3,
    "Gemma3ForCausalLM": GEMMA3_TEXT,
})

for _name, _family in ARCHITECTURES.items():
    ModelRegistry.register_model(_name, _family.model_class)


def family_for(hf_config: PretrainedConfig) -> ModelFamily:
    """The family of the first of ``hf_config.architectures`` mmjax implements.

    Raises:
      ValueError: none of them is implemented (names the supported ones).
    """
    model_cls = ModelRegistry.resolve_model_cls(hf_config)
    return family_of_class(model_cls, what=f"architectures {getattr(hf_config, 'architectures', None)}")


def family_of(model: nnx.Module) -> ModelFamily:
    """The family of a loaded model (for ``save_pretrained`` and training)."""
    return family_of_class(type(model), what=type(model).__name__)


def family_of_class(model_cls: type, *, what: str) -> ModelFamily:
    for family in ARCHITECTURES.values():
        if family.model_class is model_cls:
            return family
    raise NotImplementedError(
        f"{what}: {model_cls.__name__} is registered but is not one of mmjax's model families "
        f"({sorted({f.name for f in ARCHITECTURES.values()})}); load it yourself and build LLM(...) from it"
    )
