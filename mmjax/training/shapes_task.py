"""The shapes task: one to three solid shapes on a plain background, and one-word questions about them.

The demo model (``mmjax.demo_checkpoint()``) is trained on it, so that anyone can check
its answers with a drawing of their own:

- a square RGB image, white or light-grey background, one to three non-overlapping
  solid shapes (``circle``, ``square``, ``triangle`` pointing up), each 20-40 % of the
  image side, each in one of six colours (``COLORS``);
- ``USER: <image>\\n{question} ASSISTANT:`` with the questions ``What color is the
  {shape}?`` (asked when exactly one shape is of that kind), ``What shape is the {color}
  object?`` (when exactly one shape has that colour) and ``How many shapes are there?``;
- the answer is one word (the colour, the shape or the digit), then end of sequence; a question
  ending in ``JSON_SUFFIX`` (" Answer in JSON.") is answered as one JSON object named by its kind,
  ``{"count": 2}``, ``{"color": "red"}`` or ``{"shape": "circle"}`` (``Question.as_json``).

Scenes are drawn with PIL's ``ImageDraw`` at any size; the model's image processor
resizes them like any photo.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from collections.abc import Iterator

import numpy as np
from PIL import Image, ImageDraw

from mmjax.training.examples import TrainExample

SHAPES = ("circle", "square", "triangle")
COLORS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 200, 30),
    "purple": (140, 60, 170),
    "orange": (245, 140, 30),
}
#: A shape's side (its bounding box's) as a fraction of the image side.
MIN_SIZE, MAX_SIZE = 0.2, 0.4
#: Background grey levels: white (255) down to light grey.
LIGHTEST_BACKGROUND, DARKEST_BACKGROUND = 255, 200
PROMPT_TEMPLATE = "USER: <image>\n{question} ASSISTANT:"
#: A later turn of a conversation about the same image (it follows the last answer's end of sequence).
FOLLOW_UP_TEMPLATE = "USER: {question} ASSISTANT:"
QUESTION_KINDS = ("color", "shape", "count")
#: The end of a question that asks for its answer as JSON (``Question.as_json``).
JSON_SUFFIX = " Answer in JSON."


@dataclasses.dataclass(frozen=True)
class Shape:
    """One shape: its ``kind`` (in ``SHAPES``), ``color`` (a key of ``COLORS``), and its square
    bounding box, ``left``/``top``/``size`` as fractions of the image side."""

    kind: str
    color: str
    left: float
    top: float
    size: float

    def overlaps(self, other: Shape, margin: float = 0.0) -> bool:
        """Whether the bounding boxes, each grown by ``margin``, intersect."""
        return (self.left < other.left + other.size + margin and other.left < self.left + self.size + margin
                and self.top < other.top + other.size + margin and other.top < self.top + self.size + margin)


@dataclasses.dataclass(frozen=True)
class Scene:
    """The shapes of one image and its background grey level (0-255)."""

    shapes: tuple[Shape, ...]
    background: int = 255


@dataclasses.dataclass(frozen=True)
class Question:
    """A question about a scene (``kind`` in ``QUESTION_KINDS``) and its one-word answer."""

    kind: str
    text: str
    answer: str

    @property
    def prompt(self) -> str:
        return PROMPT_TEMPLATE.format(question=self.text)

    def as_json(self) -> Question:
        """The same question asked for a JSON answer: ``text + JSON_SUFFIX``, answered ``{"count": 2}``
        (a count as a JSON integer, a colour or shape as a string). Its answer follows ``ASSISTANT:`` with no
        space: a JSON value starts at ``{``."""
        value = int(self.answer) if self.kind == "count" else self.answer
        return Question(self.kind, self.text + JSON_SUFFIX, json.dumps({self.kind: value}))


def random_scene(rng: np.random.Generator, margin: float = 0.02, count: int | None = None) -> Scene:
    """``count`` shapes (default: one to three) at random places, sizes, kinds and colours; no
    two bounding boxes closer than ``margin`` (a fraction of the side)."""
    count = int(rng.integers(1, 4)) if count is None else count
    while True:
        shapes: list[Shape] = []
        for _ in range(count):
            shape = _place(rng, shapes, margin)
            if shape is None:
                break
            shapes.append(shape)
        if len(shapes) == count:
            background = int(rng.integers(DARKEST_BACKGROUND, LIGHTEST_BACKGROUND + 1))
            return Scene(tuple(shapes), background if rng.random() < 0.5 else LIGHTEST_BACKGROUND)


def _place(rng: np.random.Generator, placed: list[Shape], margin: float, tries: int = 50) -> Shape | None:
    for _ in range(tries):
        size = float(rng.uniform(MIN_SIZE, MAX_SIZE))
        left, top = (float(x) for x in rng.uniform(0.0, 1.0 - size, 2))
        shape = Shape(str(rng.choice(SHAPES)), str(rng.choice(list(COLORS))), left, top, size)
        if not any(shape.overlaps(other, margin) for other in placed):
            return shape
    return None


def draw_scene(scene: Scene, side: int = 336) -> Image.Image:
    """The scene as a ``side`` x ``side`` RGB image (PIL ``ImageDraw``, no anti-aliasing)."""
    image = Image.new("RGB", (side, side), (scene.background,) * 3)
    draw = ImageDraw.Draw(image)
    for shape in scene.shapes:
        x0, y0 = shape.left * side, shape.top * side
        x1, y1 = x0 + shape.size * side - 1, y0 + shape.size * side - 1
        fill = COLORS[shape.color]
        if shape.kind == "circle":
            draw.ellipse((x0, y0, x1, y1), fill=fill)
        elif shape.kind == "square":
            draw.rectangle((x0, y0, x1, y1), fill=fill)
        else:
            draw.polygon(((x0, y1), (x1, y1), ((x0 + x1) / 2, y0)), fill=fill)
    return image


def questions(scene: Scene) -> list[Question]:
    """Every question the task asks about ``scene``, with its answer."""
    kinds = [s.kind for s in scene.shapes]
    colors = [s.color for s in scene.shapes]
    asked = [Question("count", "How many shapes are there?", str(len(scene.shapes)))]
    asked += [Question("color", f"What color is the {s.kind}?", s.color)
              for s in scene.shapes if kinds.count(s.kind) == 1]
    asked += [Question("shape", f"What shape is the {s.color} object?", s.kind)
              for s in scene.shapes if colors.count(s.color) == 1]
    return asked


def random_question(rng: np.random.Generator, scene: Scene, kind: str) -> Question:
    """One of the questions of ``kind`` (in ``QUESTION_KINDS``) the task asks about ``scene``."""
    of_kind = [q for q in questions(scene) if q.kind == kind]
    return of_kind[int(rng.integers(len(of_kind)))]


def random_questions(rng: np.random.Generator, scene: Scene, count: int,
                     kind_weights: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> list[Question]:
    """Up to ``count`` different questions about ``scene``: each draws a kind among those left,
    in proportion to ``kind_weights`` (colour, shape, count: the order of ``QUESTION_KINDS``),
    then a question of that kind."""
    left, picked = questions(scene), []
    weight = dict(zip(QUESTION_KINDS, kind_weights))
    while left and len(picked) < count:
        kinds = sorted({q.kind for q in left})
        p = np.array([weight[k] for k in kinds], float)
        kind = kinds[int(rng.choice(len(kinds), p=p / p.sum()))]
        of_kind = [q for q in left if q.kind == kind]
        picked.append(of_kind[int(rng.integers(len(of_kind)))])
        left.remove(picked[-1])
    return picked


def training_examples(seed: int, sides: tuple[int, int] = (224, 448), single_shape_first: int = 0,
                      shape_counts: tuple[float, float, float] = (1.0, 1.0, 1.0),
                      kind_weights: tuple[float, float, float] = (1.0, 1.0, 1.0),
                      turns: int = 1, json_fraction: float = 0.0) -> Iterator[TrainExample]:
    """An endless stream of ``TrainExample``: a new scene each, drawn at a side in ``sides``
    (inclusive), and questions about it with their answers as targets (``" red"``).

    ``single_shape_first``: that many scenes of one shape first (a curriculum: what a shape
    looks like is learnt before which shape a question is about). ``shape_counts``: the odds
    of one, two and three shapes after that. ``kind_weights``: the odds of a colour, shape and
    count question (``random_questions``). ``turns``: questions per scene, the first as the
    prompt and the others as follow-up turns of the conversation (``USER: ... ASSISTANT:``).
    ``json_fraction``: the odds of each question being asked for a JSON answer (``Question.as_json``);
    0 draws nothing more from the stream, which is then the same as before JSON answers existed.
    """
    rng = np.random.default_rng(seed)
    odds = np.asarray(shape_counts, float) / sum(shape_counts)

    def target(question: Question) -> tuple[Question, str]:
        if json_fraction and rng.random() < json_fraction:
            asked = question.as_json()
            return asked, asked.answer
        return question, " " + question.answer

    for index in itertools.count():
        count = 1 if index < single_shape_first else int(rng.choice(3, p=odds)) + 1
        scene = random_scene(rng, count=count)
        first, *more = random_questions(rng, scene, turns, kind_weights)
        image = draw_scene(scene, int(rng.integers(sides[0], sides[1] + 1)))
        first, answer = target(first)
        follow_ups = []
        for question in more:
            question, reply = target(question)
            follow_ups.append((FOLLOW_UP_TEMPLATE.format(question=question.text), reply))
        yield TrainExample({"prompt": first.prompt, "multi_modal_data": {"image": image}}, answer, tuple(follow_ups))
