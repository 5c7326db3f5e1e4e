"""Which model class implements a Hugging Face ``architectures`` name (vLLM's ``ModelRegistry``).

The model families mmjax ships register themselves when ``mmjax.models`` is imported
(``mmjax.models.architectures``); a model of your own joins the same way::

    from mmjax.registry import ModelRegistry
    ModelRegistry.register_model("MyVLMForConditionalGeneration", MyVLM)
"""

from __future__ import annotations

import threading

from transformers import PretrainedConfig


class _ModelRegistry:
    """``architectures`` name -> mmjax model class."""

    def __init__(self) -> None:
        self._classes: dict[str, type] = {}
        self._lock = threading.Lock()

    def register_model(self, architecture: str, model_cls: type) -> None:
        """Serve ``architecture`` (a name in ``config.json``'s ``architectures``) with ``model_cls``."""
        if not isinstance(architecture, str) or not architecture:
            raise TypeError(f"architecture must be a non-empty str, got {architecture!r}")
        if not isinstance(model_cls, type):
            raise TypeError(f"model_cls must be a class, got {type(model_cls).__name__}")
        with self._lock:
            self._classes[architecture] = model_cls

    def get_supported_archs(self) -> list[str]:
        """The registered architecture names, sorted."""
        return sorted(self._classes)

    def resolve_model_cls(self, hf_config: PretrainedConfig) -> type:
        """The class for the first of ``hf_config.architectures`` that is registered.

        Raises:
          ValueError: none of them is.
        """
        names = list(getattr(hf_config, "architectures", None) or [])
        for name in names:
            if name in self._classes:
                return self._classes[name]
        raise ValueError(
            f"mmjax has no implementation of architectures {names} (model_type "
            f"{getattr(hf_config, 'model_type', None)!r}); supported: {self.get_supported_archs()}. "
            f"For a model of your own, pass ModelConfig(model_cls=YourModel, ...) or "
            f"ModelRegistry.register_model(name, YourModel)"
        )


#: The process-wide registry (vLLM's ``vllm.ModelRegistry``).
ModelRegistry = _ModelRegistry()


def resolve_model_class(hf_config: PretrainedConfig) -> type:
    """The mmjax model class for ``hf_config.architectures``."""
    return ModelRegistry.resolve_model_cls(hf_config)
