"""The Qwen-VL input mapping is host-side and model-agnostic: numpy, PIL, the standard library, mmjax.processing.

It must not reach up into ``mmjax.models``, ``mmjax.engine`` or ``mmjax.registry``
(they import it, not the other way round), nor depend on jax, torch or transformers.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import mmjax.processing

MODULES = ["qwen_vl_config", "qwen_vl_frames", "qwen_vl_geometry", "qwen_vl_image", "qwen_vl_patches",
           "qwen_vl_video", "resample"]  # fmt: skip
ALLOWED_THIRD_PARTY = {"numpy", "PIL"}


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            names.add(node.module)
    return names


def test_qwen_vl_processing_imports_only_numpy_pil_stdlib_and_itself():
    root = Path(mmjax.processing.__file__).parent
    for module in MODULES:
        for name in imported_modules(root / f"{module}.py"):
            top = name.split(".")[0]
            allowed = top in ALLOWED_THIRD_PARTY or top in sys.stdlib_module_names or top == "__future__"
            assert allowed or name.startswith("mmjax.processing."), f"{module} imports {name}"
