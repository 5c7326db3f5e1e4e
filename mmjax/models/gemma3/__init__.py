"""Gemma 3 (``Gemma3ForConditionalGeneration``, ``Gemma3ForCausalLM``): a SigLIP tower and a decoder whose
sliding-window and global layers alternate, each image's soft tokens attending to each other."""

from mmjax.models.gemma3.config import Gemma3Config, Gemma3TextConfig
from mmjax.models.gemma3.family import GEMMA3, GEMMA3_TEXT
from mmjax.models.gemma3.model import Gemma3ForCausalLM, Gemma3ForConditionalGeneration, forward

__all__ = ["GEMMA3", "GEMMA3_TEXT", "Gemma3Config", "Gemma3ForCausalLM", "Gemma3ForConditionalGeneration",
           "Gemma3TextConfig", "forward"]
