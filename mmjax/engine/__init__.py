"""The inference engine: continuous batching over a paged KV cache, sampling, generate()."""

from mmjax.engine.config import EngineConfig
from mmjax.engine.engine import LLMEngine
from mmjax.engine.errors import PromptError, StepError
from mmjax.engine.generate import generate
from mmjax.engine.outputs import CompletionOutput, Logprob, RequestOutput
from mmjax.engine.sampling_params import SamplingParams
from mmjax.engine.step import encode_multimodal, paged_step
from mmjax.engine.warmup import count_compilations

__all__ = [
    "CompletionOutput", "EngineConfig", "LLMEngine", "Logprob", "PromptError", "RequestOutput",
    "SamplingParams", "StepError", "count_compilations", "encode_multimodal", "generate",
    "paged_step",
]
