"""Structured outputs: constraints (vLLM's ``StructuredOutputsParams``) compiled by llguidance into
per-row token bitmasks the engine's sampler applies. Imports nothing of the engine.

``params`` is what every ``import mmjax`` needs; ``compiler`` and ``masks`` (llguidance) are imported
where a constrained request first needs them.
"""

from mmjax.structured.params import CONSTRAINTS, StructuredOutputsParams

__all__ = ["CONSTRAINTS", "StructuredOutputsParams"]
