"""The README's main job (``mmjax demo``) runs end to end with no download."""

from mmjax.__main__ import main


def test_demo_runs_end_to_end(capsys):
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    assert "random weights" in out  # says plainly that the default checkpoint is random
    assert "[image 0: 576 tokens at 4]" in out  # (336 / 14) ** 2 placeholders after "<s>USER: "
    assert "pixel_values: 1x3x336x336" in out
