"""Gemma 3's input processing is host-side: numpy, PIL, the standard library and ``mmjax.processing`` only.

It must not reach up into ``mmjax.models``, ``mmjax.engine`` or ``mmjax.registry`` (they import it), nor
depend on jax, torch or transformers (the prompt layout takes any object with ``encode`` and ``decode``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import mmjax.processing
from tests.processing.test_qwen_vl_layering import ALLOWED_THIRD_PARTY, imported_modules

MODULES = ["gemma3_config", "gemma3_crops", "gemma3_image", "gemma3_prompt"]


def test_gemma3_processing_imports_only_numpy_pil_stdlib_and_itself():
    root = Path(mmjax.processing.__file__).parent
    for module in MODULES:
        for name in imported_modules(root / f"{module}.py"):
            top = name.split(".")[0]
            allowed = top in ALLOWED_THIRD_PARTY or top in sys.stdlib_module_names or top == "__future__"
            assert allowed or name.startswith("mmjax.processing."), f"{module} imports {name}"
