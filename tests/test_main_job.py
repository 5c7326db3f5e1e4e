"""The README's main job (``mmjax demo``) and ``mmjax generate`` run end to end with no download."""

import re

import pytest

from mmjax.__main__ import main


def test_demo_runs_end_to_end(capsys):
    assert main(["demo", "--max-tokens", "5"]) == 0
    out = capsys.readouterr().out
    assert "random weights" in out  # says plainly that the default checkpoint is random
    assert "[image 0: 576 tokens at 4]" in out  # (336 / 14) ** 2 placeholders after "<s>USER: "
    assert "pixel_values: 1x3x336x336" in out
    assert "finished: length after 5 tokens" in out
    # The second question about the same photo: its first page-aligned 576+ tokens (the image, after
    # "<s>USER: ") come from the prefix cache, the rest of the image's embeddings from the encoder cache.
    reused, total = map(int, re.search(r"prefix cache reused (\d+) of (\d+) prompt tokens", out).groups())
    assert 576 <= reused < total and reused % 16 == 0
    assert "vision tower ran 0 time(s)" in out and "processor cache 2 hit(s)" in out  # generate and the follow-up reuse the first mapping


def test_generate_command_with_two_image_files(tmp_path, capsys):
    from mmjax.demo import demo_photo

    first, second = tmp_path / "a.png", tmp_path / "b.jpg"
    demo_photo().save(first)
    demo_photo().rotate(90).convert("L").save(second)
    assert main(["generate", "--image", str(first), "--image", str(second), "--max-tokens", "3",
                 "--temperature", "0.7", "--seed", "1"]) == 0
    out = capsys.readouterr().out
    assert "[image 0: 576 tokens" in out and "[image 1: 576 tokens" in out
    assert "finished: length after 3 tokens" in out


def test_generate_command_refuses_an_unreadable_image(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    with pytest.raises(SystemExit, match="cannot read image"):
        main(["generate", "--image", str(bad)])


def test_generate_on_a_mesh_and_a_bad_mesh_flag(capsys):
    assert main(["generate", "--mesh", "data=1,model=1", "--max-tokens", "2"]) == 0
    out = capsys.readouterr().out
    assert "mesh: {'data': 1, 'model': 1} over 1 cpu devices, 1 process(es)" in out
    assert "finished: length after 2 tokens" in out
    with pytest.raises(SystemExit):
        main(["generate", "--mesh", "data:2"])
    assert 'expected "auto" or axis sizes like "data=2,model=4"' in capsys.readouterr().err
