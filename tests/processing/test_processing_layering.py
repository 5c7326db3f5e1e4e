"""Input processing is host-side and model-agnostic: numpy, PIL, the standard library and ``mmjax.processing``.

Every module of ``mmjax.processing`` (Qwen-VL's and Gemma 3's images, frames and prompts, anyres geometry,
resampling) must not reach up into ``mmjax.models``, ``mmjax.engine`` or ``mmjax.registry`` (they import it,
not the other way round), nor depend on jax, torch or transformers.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

import mmjax.processing

ROOT = Path(mmjax.processing.__file__).parent
MODULES = sorted(p.stem for p in ROOT.glob("*.py") if p.stem != "__init__")
ALLOWED_THIRD_PARTY = {"numpy", "PIL"}
#: Modules that may also import these: LLaVA-NeXT's tile layout is a jax PyTree (an encoder input).
ALSO_ALLOWED = {"anyres_layout": {"jax", "mmjax.types"}}


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            names.add(node.module)
    return names


def test_the_families_modules_are_all_checked():
    assert {"qwen_vl_image", "qwen_vl_video", "gemma3_image", "gemma3_prompt", "resample"} <= set(MODULES)


@pytest.mark.parametrize("module", MODULES)
def test_processing_imports_only_numpy_pil_stdlib_and_itself(module):
    for name in imported_modules(ROOT / f"{module}.py"):
        top = name.split(".")[0]
        allowed = (top in ALLOWED_THIRD_PARTY or top in sys.stdlib_module_names or top == "__future__"
                   or name in ALSO_ALLOWED.get(module, ()))
        assert allowed or name.startswith("mmjax.processing."), f"{module} imports {name}"
