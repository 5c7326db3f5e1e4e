"""mmjax: vLLM's multimodal input system and inference path, in JAX.

The multimodal registry (vLLM's names) lives in ``mmjax.registry``; the most
used names are re-exported here.
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

__version__ = "0.1.0"

__all__ = [
    "INPUT_REGISTRY",
    "MULTIMODAL_REGISTRY",
    "ModelConfig",
    "MultiModalInputs",
    "PromptInputs",
    "SupportsMultiModal",
    "TextPrompt",
    "TokensPrompt",
    "process_prompt",
]
