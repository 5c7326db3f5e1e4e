"""The porting guide's code blocks run, in order, as one program."""

import pathlib
import re

import pytest

DOCS = pathlib.Path(__file__).resolve().parents[1] / "docs"


def python_blocks(path: pathlib.Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


def test_the_porting_guide_runs(tmp_path, monkeypatch, capsys):
    blocks = python_blocks(DOCS / "adding_a_multimodal_model.md")
    assert len(blocks) >= 8
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "guide"}
    for i, block in enumerate(blocks):
        try:
            exec(compile(block, f"adding_a_multimodal_model.md block {i}", "exec"), namespace)
        except Exception as err:  # name the block that broke
            pytest.fail(f"guide block {i} raised {type(err).__name__}: {err}\n---\n{block}")
    printed = capsys.readouterr().out
    assert "PlaceholderRange(offset=" in printed
    assert "at most 2 image item(s), but 3 were given" in printed  # the error example really raised
    model_cls = namespace["PatchVLM"]
    from mmjax.registry import hooks_of

    hooks = hooks_of(model_cls)
    assert hooks.input_processor is namespace["expand_image_placeholders"]
    assert hooks.dummy_data_factory is namespace["dummy_data_for_patch_vlm"]
