"""mmjax: vLLM's multimodal input system and inference path, in JAX.

``llm = mmjax.load(path)`` loads a Hugging Face checkpoint; ``llm.logits(prompt)``
runs it; ``mmjax.generate(llm, prompts)`` and ``mmjax.chat(llm, messages)`` batch
prompts and conversations through the engine; ``mmjax.train(llm, examples)`` fine-tunes it with optax;
``mmjax.demo_checkpoint()`` is the small trained model that ships with mmjax. The multimodal registry
(vLLM's names) lives in ``mmjax.registry``; the most used names are re-exported here.
"""

from mmjax.gc_pause import gc_paused as _gc_paused

# jax, flax and transformers (and torch, where installed) come in here: ~500k objects that the collector would
# walk again and again as they accumulate (see mmjax.gc_pause)
with _gc_paused():
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

    from mmjax.assets import demo_checkpoint
    from mmjax.engine.config import EngineConfig
    from mmjax.engine.errors import PromptError, StepError
    from mmjax.engine.generate import generate
    from mmjax.engine.outputs import CompletionOutput, Logprob, RequestOutput
    from mmjax.engine.sampling_params import SamplingParams
    from mmjax.llm import LLM, load
    from mmjax.structured import StructuredOutputsParams

__version__ = "0.1.0"

#: Names imported on first use (PEP 562): ``load`` + ``generate`` need neither the chat front end nor
#: training, whose modules would otherwise be imported by every ``import mmjax``.
_LAZY = {
    "chat": "mmjax.serving.chat",
    "LoraConfig": "mmjax.training",
    "TrainExample": "mmjax.training",
    "TrainResult": "mmjax.training",
    "save_pretrained": "mmjax.training",
    "score": "mmjax.training",
    "train": "mmjax.training",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # the next lookup does not come here
        return value
    raise AttributeError(f"module 'mmjax' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__all__ = [
    "CompletionOutput",
    "EngineConfig",
    "INPUT_REGISTRY",
    "LLM",
    "LoraConfig",
    "Logprob",
    "MULTIMODAL_REGISTRY",
    "ModelConfig",
    "MultiModalInputs",
    "PromptError",
    "StepError",
    "PromptInputs",
    "RequestOutput",
    "SamplingParams",
    "StructuredOutputsParams",
    "SupportsMultiModal",
    "TextPrompt",
    "TokensPrompt",
    "TrainExample",
    "TrainResult",
    "chat",
    "demo_checkpoint",
    "generate",
    "load",
    "process_prompt",
    "save_pretrained",
    "score",
    "train",
]
