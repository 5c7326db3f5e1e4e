"""The README's main job (``mmjax demo``) and ``mmjax generate`` run end to end with no download."""

import re

import numpy as np
import pytest
from PIL import Image
from skimage import measure

from mmjax.__main__ import main


def test_demo_answers_questions_about_a_new_scene(tmp_path, capsys):
    scene_file = tmp_path / "scene.png"
    assert main(["demo", "--seed", "5", "--scene", str(scene_file)]) == 0
    out = capsys.readouterr().out
    assert "the demo model" in out and str(scene_file) in out
    assert "[image 0: 64 tokens at 4]" in out  # (96 / 12) ** 2 placeholders after "<s>USER: "
    rows = re.findall(r"^  (How many shapes are there\?|What color is the \w+\?|What shape is the \w+ object\?)"
                      r" +(\S+) +(\S+) +(right|WRONG)$", out, flags=re.M)
    assert [row[0].split()[1] for row in rows] == ["many", "color", "shape"]  # one question of each kind
    assert all(answer == truth for _, answer, truth, _ in rows), rows  # the shipped model knows this scene
    assert "3 of 3 right" in out
    assert "the vision tower ran 1 time(s) for 3 questions" in out
    # The truth column is the scene's: measure the saved image (its shapes' colours) independently.
    pixels = np.asarray(Image.open(scene_file).convert("RGB")).astype(int)
    assert pixels.shape == (336, 336, 3)
    coloured = (pixels.max(-1) - pixels.min(-1)) > 40
    count = int(rows[0][2])
    assert measure.label(coloured).max() == count


def test_the_scene_is_described_in_english():
    from mmjax.shapes_demo import describe_scene
    from mmjax.training.shapes_task import Scene, Shape

    scene = Scene((Shape("circle", "orange", 0.1, 0.1, 0.3), Shape("square", "red", 0.6, 0.6, 0.3)))
    assert describe_scene(scene) == "an orange circle, a red square"


def test_demo_answers_questions_about_your_own_drawing(tmp_path, capsys):
    from mmjax.testing.shape_scenes import Item, render  # the second renderer, not the training one

    drawing = tmp_path / "mine.png"
    render((Item("triangle", "blue", 90, 100, 90), Item("circle", "orange", 220, 210, 100)), 300, 255).save(drawing)
    assert main(["demo", "--image", str(drawing), "--question", "How many shapes are there?",
                 "--question", "What color is the triangle?", "--question", "What shape is the orange object?"]) == 0
    out = capsys.readouterr().out
    assert f"{drawing}: How many shapes are there? 2" in out
    assert f"{drawing}: What color is the triangle? blue" in out
    assert f"{drawing}: What shape is the orange object? circle" in out


def test_demo_question_goes_with_an_image(capsys):
    with pytest.raises(SystemExit):
        main(["demo", "--question", "How many shapes are there?"])
    assert "--question asks the demo model about --image files" in capsys.readouterr().err


def test_generate_command_with_two_image_files(tmp_path, capsys):
    from mmjax.demo import demo_photo

    first, second = tmp_path / "a.png", tmp_path / "b.jpg"
    demo_photo().save(first)
    demo_photo().rotate(90).convert("L").save(second)
    assert main(["generate", "--image", str(first), "--image", str(second), "--max-tokens", "3",
                 "--temperature", "0.7", "--seed", "1"]) == 0
    out = capsys.readouterr().out
    assert "[image 0: 64 tokens" in out and "[image 1: 64 tokens" in out  # the demo model: 96 / 12 = 8 x 8 patches
    assert re.search(r"finished: (length after 3|stop after [123]) tokens", out)  # the demo model answers in a word


def test_generate_command_refuses_an_unreadable_image(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    with pytest.raises(SystemExit, match="cannot read image"):
        main(["generate", "--image", str(bad)])


def test_generate_on_a_mesh_and_a_bad_mesh_flag(capsys):
    assert main(["generate", "--mesh", "data=1,model=1", "--max-tokens", "2"]) == 0
    out = capsys.readouterr().out
    assert "mesh: {'data': 1, 'model': 1} over 1 cpu devices, 1 process(es)" in out
    assert re.search(r"finished: (length|stop) after [12] tokens", out)
    with pytest.raises(SystemExit):
        main(["generate", "--mesh", "data:2"])
    assert 'expected "auto" or axis sizes like "data=2,model=4"' in capsys.readouterr().err
