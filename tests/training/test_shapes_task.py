"""The shapes task's generator draws what its scene says and asks only questions with one answer;
the second renderer agrees with the task's statement. Checked by measuring the pictures
(connected components, pixel colours), not by the generators' own bookkeeping."""

from __future__ import annotations

import numpy as np
import pytest
from skimage import measure

from mmjax.testing import shape_scenes
from mmjax.training import shapes_task

#: The task's statement (issue 16), written out here rather than imported.
STATED_COLORS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220),
                 "yellow": (235, 200, 30), "purple": (140, 60, 170), "orange": (245, 140, 30)}


def blobs(image: np.ndarray) -> list[dict]:
    """Connected regions of non-grey pixels: their pixel count, bounding box and mean colour."""
    rgb = image.astype(int)
    coloured = (rgb.max(axis=-1) - rgb.min(axis=-1)) > 40
    labels = measure.label(coloured, connectivity=1)
    found = []
    for region in measure.regionprops(labels):
        if region.area < 20:  # anti-aliased specks between nothing
            continue
        y0, x0, y1, x1 = region.bbox
        found.append({"area": region.area, "box": (x1 - x0, y1 - y0), "fill": region.area / ((x1 - x0) * (y1 - y0)),
                      "color": rgb[labels == region.label].mean(axis=0)})
    return found


def nearest_color(rgb: np.ndarray) -> str:
    return min(STATED_COLORS, key=lambda c: np.abs(np.array(STATED_COLORS[c]) - rgb).sum())


#: How much of its bounding box each kind fills: circle pi/4, square 1, triangle 1/2.
FILL = {"circle": np.pi / 4, "square": 1.0, "triangle": 0.5}


def kind_from_fill(fill: float) -> str:
    return min(FILL, key=lambda k: abs(FILL[k] - fill))


def test_the_generator_draws_its_scene():
    rng = np.random.default_rng(7)
    for _ in range(40):
        scene = shapes_task.random_scene(rng)
        side = int(rng.integers(224, 449))
        pixels = np.asarray(shapes_task.draw_scene(scene, side))
        assert pixels.shape == (side, side, 3)
        colours, counts = np.unique(pixels.reshape(-1, 3), axis=0, return_counts=True)
        background = colours[np.argmax(counts)]
        assert background[0] == background[1] == background[2] and 200 <= background[0] <= 255
        found = blobs(pixels)
        assert len(found) == len(scene.shapes) and 1 <= len(found) <= 3
        for blob in found:
            assert 0.19 * side <= max(blob["box"]) <= 0.41 * side
            assert np.abs(blob["color"] - STATED_COLORS[nearest_color(blob["color"])]).max() <= 1
        measured = sorted((nearest_color(b["color"]), kind_from_fill(b["fill"])) for b in found)
        assert measured == sorted((s.color, s.kind) for s in scene.shapes)


def test_the_second_renderer_draws_its_items():
    for task in shape_scenes.task_images(30, seed=3):
        pixels = np.asarray(task.image)
        found = blobs(pixels)
        assert len(found) == len(task.items)
        measured = sorted((nearest_color(b["color"]), kind_from_fill(b["fill"])) for b in found)
        assert measured == sorted((i.color, i.kind) for i in task.items)
        for blob in found:
            assert 0.19 * pixels.shape[0] <= max(blob["box"]) <= 0.41 * pixels.shape[0]


@pytest.mark.parametrize("seed", range(5))
def test_questions_have_exactly_one_answer(seed):
    rng = np.random.default_rng(seed)
    for _ in range(30):
        scene = shapes_task.random_scene(rng)
        asked = shapes_task.questions(scene)
        assert asked[0].text == "How many shapes are there?" and asked[0].answer == str(len(scene.shapes))
        for q in asked[1:]:
            if q.kind == "color":
                [match] = [s for s in scene.shapes if f"the {s.kind}?" in q.text]
                assert q.answer == match.color
            else:
                [match] = [s for s in scene.shapes if f"the {s.color} object" in q.text]
                assert q.answer == match.kind
            assert q.prompt == f"USER: <image>\n{q.text} ASSISTANT:"
        kinds = [s.kind for s in scene.shapes]
        assert {q.text for q in asked if q.kind == "color"} == {
            f"What color is the {k}?" for k in kinds if kinds.count(k) == 1}


def test_both_renderers_ask_the_same_questions_of_the_same_scene():
    scene = shapes_task.Scene((shapes_task.Shape("circle", "red", 0.1, 0.1, 0.3),
                               shapes_task.Shape("circle", "blue", 0.6, 0.1, 0.3),
                               shapes_task.Shape("square", "red", 0.3, 0.6, 0.25)))
    items = tuple(shape_scenes.Item(s.kind, s.color, 0, 0, 1) for s in scene.shapes)
    asked = sorted((q.text, q.answer) for q in shapes_task.questions(scene))
    assert asked == sorted(shape_scenes.task_questions(items))
    assert sorted(shape_scenes.task_questions(items)) == sorted([
        ("How many shapes are there?", "3"), ("What color is the square?", "red"),
        ("What shape is the blue object?", "circle")])


def test_training_examples_are_seeded():
    first = [next(shapes_task.training_examples(3)) for _ in range(2)]
    assert first[0].target == first[1].target
    assert np.array_equal(np.asarray(first[0].prompt["multi_modal_data"]["image"]),
                          np.asarray(first[1].prompt["multi_modal_data"]["image"]))
    answers = (*STATED_COLORS, *shapes_task.SHAPES, "1", "2", "3")
    assert first[0].target.startswith(" ") and first[0].target.strip() in answers


def answer_from_picture(question: str, found: list[dict]) -> str:
    """The answer to ``question`` read off the measured blobs."""
    pairs = [(nearest_color(b["color"]), kind_from_fill(b["fill"])) for b in found]
    if question == "How many shapes are there?":
        return str(len(pairs))
    if question.startswith("What color is the "):
        [color] = [c for c, k in pairs if k == question.removeprefix("What color is the ").removesuffix("?")]
        return color
    [kind] = [k for c, k in pairs if c == question.removeprefix("What shape is the ").removesuffix(" object?")]
    return kind


def test_conversations_ask_different_questions_and_answer_them_right():
    stream = shapes_task.training_examples(5, sides=(224, 260), single_shape_first=4, shape_counts=(0, 1, 1),
                                           kind_weights=(0.45, 0.45, 0.1), turns=3)
    for index, example in zip(range(16), stream):
        found = blobs(np.asarray(example.prompt["multi_modal_data"]["image"]))
        assert len(found) == 1 if index < 4 else len(found) in (2, 3)  # the curriculum, then no single shapes
        first = example.prompt["prompt"].removeprefix("USER: <image>\n").removesuffix(" ASSISTANT:")
        asked = [(first, example.target)]
        for text, target in example.follow_ups:
            assert text.startswith("USER: ") and text.endswith(" ASSISTANT:") and "<image>" not in text
            asked.append((text.removeprefix("USER: ").removesuffix(" ASSISTANT:"), target))
        pairs = [(nearest_color(b["color"]), kind_from_fill(b["fill"])) for b in found]
        askable = 1 + sum([k for _, k in pairs].count(k) == 1 for _, k in pairs) + sum(
            [c for c, _ in pairs].count(c) == 1 for c, _ in pairs)
        assert len(asked) == min(3, askable) and len({q for q, _ in asked}) == len(asked)
        for question, target in asked:
            assert target == " " + answer_from_picture(question, found), (question, target)


def test_question_kinds_follow_their_weights():
    rng = np.random.default_rng(0)
    scene = shapes_task.Scene((shapes_task.Shape("circle", "red", 0.1, 0.1, 0.3),
                               shapes_task.Shape("square", "blue", 0.6, 0.1, 0.3)))
    assert shapes_task.QUESTION_KINDS == ("color", "shape", "count")  # the weights' order
    only_shapes = [shapes_task.random_questions(rng, scene, 1, (0, 1, 0))[0].kind for _ in range(20)]
    assert only_shapes == ["shape"] * 20
    firsts = [shapes_task.random_questions(rng, scene, 1, (2, 1, 1))[0].kind for _ in range(4000)]
    assert abs(firsts.count("color") / 4000 - 0.5) < 0.03 and abs(firsts.count("count") / 4000 - 0.25) < 0.03
    everything = shapes_task.random_questions(rng, scene, 9)
    assert sorted(q.text for q in everything) == sorted(q.text for q in shapes_task.questions(scene))  # 5, no repeats
