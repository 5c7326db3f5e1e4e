"""mmjax: vLLM's multimodal input system and inference path, in JAX.

``llm = mmjax.load(path)`` loads a Hugging Face checkpoint; ``llm.logits(prompt)``
runs it. The multimodal registry (vLLM's names) lives in ``mmjax.registry``; the
most used names are re-exported here.
"""

from mmjax.registry import (
    INPUT_REGISTRY,
    MULTIMODAL_REGISTRY,
    ModelConfig,
    MultiModalInputs,
    PromptInputs,
    SupportsMultiModal,
    TextPrompt,
    TokensPrompt,
    process_prompt,
)

from mmjax.llm import LLM, load

__version__ = "0.1.0"

__all__ = [
    "INPUT_REGISTRY",
    "LLM",
    "MULTIMODAL_REGISTRY",
    "ModelConfig",
    "MultiModalInputs",
    "PromptInputs",
    "SupportsMultiModal",
    "TextPrompt",
    "TokensPrompt",
    "load",
    "process_prompt",
]
