"""mmjax: vLLM's multimodal input system and inference path, in JAX.

The public API grows with the project; see README.md.
"""

__version__ = "0.1.0"
