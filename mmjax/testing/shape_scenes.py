"""A second, independent renderer of the shapes task, to check the demo model with.

It shares no code with the training generator (``mmjax.training.shapes_task``): its own
placement (centres and radii, not boxes), its own drawing (pixel coverage computed from
each shape's inequalities, 4 x 4 samples a pixel, so its edges are anti-aliased where
PIL's are not), an equilateral triangle (the generator's is as tall as it is wide), and
its own questions, written from the task's statement:

- colours: red (220,40,40), green (40,170,60), blue (40,80,220), yellow (235,200,30),
  purple (140,60,170), orange (245,140,30); shapes: circle, square, triangle (pointing up);
- each shape 20-40 % of the image side; one to three, not overlapping; a white or
  light-grey background;
- "What color is the {shape}?" / "What shape is the {color} object?" when exactly one
  shape matches; "How many shapes are there?".
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from PIL import Image

PALETTE = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220),
           "yellow": (235, 200, 30), "purple": (140, 60, 170), "orange": (245, 140, 30)}
KINDS = ("circle", "square", "triangle")
_SUPERSAMPLE = 4


@dataclasses.dataclass(frozen=True)
class Item:
    """A shape centred at (``x``, ``y``) with extent ``d`` (diameter / side / base), in pixels."""

    kind: str
    color: str
    x: float
    y: float
    d: float


@dataclasses.dataclass(frozen=True)
class TaskImage:
    """A rendered scene and the task's questions about it, as ``(question, answer)`` pairs."""

    image: Image.Image
    items: tuple[Item, ...]
    qa: tuple[tuple[str, str], ...]


def sample_items(rng: np.random.Generator, side: int) -> tuple[Item, ...]:
    """One to three items, each 20-40 % of ``side``, their enclosing circles apart."""
    wanted = int(rng.choice([1, 2, 3]))
    while True:
        items: list[Item] = []
        for _ in range(200):
            if len(items) == wanted:
                return tuple(items)
            d = side * rng.uniform(0.2, 0.4)
            x, y = rng.uniform(d / 2 + 1, side - d / 2 - 1, size=2)
            # an enclosing circle of radius d / sqrt(2) holds each kind; keep those apart
            if all(math.hypot(x - o.x, y - o.y) > (d + o.d) / math.sqrt(2) + 2 for o in items):
                items.append(Item(str(rng.choice(KINDS)), str(rng.choice(list(PALETTE))), float(x), float(y), float(d)))


def coverage(item: Item, side: int) -> np.ndarray:
    """The fraction of each pixel of a ``side`` x ``side`` image the item covers, ``[side, side]``."""
    n = _SUPERSAMPLE
    offsets = (np.arange(n) + 0.5) / n
    grid = (np.arange(side)[:, None] + offsets[None, :]).reshape(-1)
    ys, xs = grid[:, None], grid[None, :]
    half = item.d / 2
    if item.kind == "circle":
        inside = (xs - item.x) ** 2 + (ys - item.y) ** 2 <= half ** 2
    elif item.kind == "square":
        inside = (np.abs(xs - item.x) <= half) & (np.abs(ys - item.y) <= half)
    else:  # equilateral, pointing up, centred on its bounding box
        height = item.d * math.sqrt(3) / 2
        top, bottom = item.y - height / 2, item.y + height / 2
        from_top = np.clip(ys - top, 0, None)
        inside = (ys >= top) & (ys <= bottom) & (np.abs(xs - item.x) <= from_top / math.sqrt(3))
    return inside.reshape(side, n, side, n).mean(axis=(1, 3))


def render(items: tuple[Item, ...], side: int, background: int) -> Image.Image:
    """The items over a plain grey ``background`` (0-255), anti-aliased."""
    canvas = np.full((side, side, 3), float(background))
    for item in items:
        alpha = coverage(item, side)[..., None]
        canvas = canvas * (1 - alpha) + np.array(PALETTE[item.color], float) * alpha
    return Image.fromarray(np.round(canvas).astype(np.uint8), "RGB")


def task_questions(items: tuple[Item, ...]) -> tuple[tuple[str, str], ...]:
    """Every question the task asks about ``items`` with its one-word answer."""
    qa = [("How many shapes are there?", str(len(items)))]
    for item in items:
        if sum(o.kind == item.kind for o in items) == 1:
            qa.append((f"What color is the {item.kind}?", item.color))
        if sum(o.color == item.color for o in items) == 1:
            qa.append((f"What shape is the {item.color} object?", item.kind))
    return tuple(qa)


def task_images(count: int, seed: int, sides: tuple[int, ...] = (224, 256, 336, 400)) -> list[TaskImage]:
    """``count`` scenes, each at a side drawn from ``sides``, on white or light grey."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        side = int(rng.choice(sides))
        items = sample_items(rng, side)
        background = 255 if rng.random() < 0.5 else int(rng.integers(205, 250))
        out.append(TaskImage(render(items, side, background), items, task_questions(items)))
    return out


def prompt_for(question: str) -> str:
    """The task's prompt around ``question``."""
    return f"USER: <image>\n{question} ASSISTANT:"


def answers_by_generate(llm, tasks: list[TaskImage], max_tokens: int = 4) -> list[str]:
    """Every question of every task, answered greedily through ``mmjax.generate`` (stripped text)."""
    from mmjax.engine.generate import generate
    from mmjax.engine.sampling_params import SamplingParams

    prompts = [{"prompt": prompt_for(q), "multi_modal_data": {"image": t.image}} for t in tasks for q, _ in t.qa]
    outputs = generate(llm, prompts, SamplingParams(max_tokens=max_tokens, temperature=0.0), use_tqdm=False)
    return [o.text.strip() for o in outputs]


def answers_by_logits(llm, tasks: list[TaskImage]) -> list[str]:
    """Every question answered by the token ``llm.logits`` ranks highest over the whole
    vocabulary at the prompt's last position (decoded, stripped)."""
    answers = []
    for task in tasks:
        for question, _ in task.qa:
            _, logits = llm.logits({"prompt": prompt_for(question), "multi_modal_data": {"image": task.image}})
            answers.append(llm.tokenizer.decode([int(np.argmax(logits[-1]))]).strip())
    return answers

