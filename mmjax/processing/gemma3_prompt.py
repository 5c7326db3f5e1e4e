"""Gemma 3's prompt layout: each ``<start_of_image>`` marker's expansion, spliced into token ids as transformers
tokenizes it, and the soft-token spans that attend to each other both ways.

transformers' ``Gemma3Processor`` replaces each ``<start_of_image>`` of the text by the image's sequence
``S = "\\n\\n<start_of_image>" + "<image_soft_token>" * mm_tokens_per_image + "<end_of_image>\\n\\n"``, or, for an
image cut into ``n`` pan-and-scan crops, by ``"Here is the original image " + S + " and here are some crops
to help you see better " + " ".join([S] * n)``, and tokenizes the whole text. So the ``"\\n\\n"`` merge with
the newlines around them (Gemma's tokenizer has one token per run of newlines: ``"user\\n" + "\\n\\n"`` is
one ``"\\n\\n\\n"``), and the preamble's first word may merge with the text before it.

An image's expansion is split in three (``image_run``):

* ``lead``: the text before its first ``<start_of_image>`` (``"\\n\\n"``, or ``"Here is the original image
  \\n\\n"``), tokenized together with the prompt's text before the marker, back to the previous special token;
* its placeholder range, ``range_ids``: from its first ``<start_of_image>`` to its last ``<end_of_image>``.
  Its text between sequences (``"\\n\\n and here are ... better \\n\\n"``, ``"\\n\\n \\n\\n"``) lies between special
  tokens, so its ids depend on nothing around it: the range is a function of the crop count alone;
* ``tail``: ``"\\n\\n"``, tokenized together with the prompt's text after the marker, up to the next special
  token (or the next image's lead: two markers in a row give one ``"\\n\\n\\n\\n"``).

``splice_images`` does this on token ids: the text around a marker is the decoded ids, re-tokenized with the
lead or tail only where it decodes and re-encodes to the same ids (hand-made ids that do not are kept as
they are, the lead and tail tokenized alone beside them). So the ids equal transformers' ``input_ids`` of
the same text, whether the prompt came as text or as ids.

Inside a range, the tokens that are not ``<image_soft_token>`` are text (``soft_token_mask``); the model
embeds them as text and puts the tower's rows, sequence by sequence, at the soft tokens.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import NamedTuple, Protocol

import numpy as np

from mmjax.processing.token_runs import token_runs

PREAMBLE = "Here is the original image "
CROPS_INTRO = " and here are some crops to help you see better "
NEWLINES = "\n\n"


class TextTokenizer(Protocol):
    """What the layout needs of a tokenizer (a transformers tokenizer has it)."""

    def encode(self, text: str, add_special_tokens: bool = ...) -> list[int]: ...

    def decode(self, token_ids: list[int]) -> str: ...


class ImageTokens(NamedTuple):
    """Gemma 3's image token ids (``Gemma3Config``'s ``boi_token_index``, ``eoi_token_index``,
    ``image_token_index``) and ``mm_tokens_per_image``."""

    boi: int
    eoi: int
    soft: int
    per_sequence: int


class ImageRun(NamedTuple):
    """One image's expansion: ``lead`` text, its placeholder range's ids, ``tail`` text (see the module doc)."""

    lead: str
    range_ids: tuple[int, ...]
    tail: str


def _encode(tokenizer: TextTokenizer, text: str) -> list[int]:
    return list(tokenizer.encode(text, add_special_tokens=False)) if text else []


def image_run(num_crops: int, tokens: ImageTokens, tokenizer: TextTokenizer) -> ImageRun:
    """The expansion of an image cut into ``num_crops`` pan-and-scan crops (0: none): ``1 + num_crops``
    sequences of ``<start_of_image>``, ``per_sequence`` soft tokens and ``<end_of_image>``."""
    if num_crops < 0:
        raise ValueError(f"num_crops must be >= 0, got {num_crops}")
    sequence = [tokens.boi] + [tokens.soft] * tokens.per_sequence + [tokens.eoi]
    betweens = [NEWLINES + CROPS_INTRO + NEWLINES] + [NEWLINES + " " + NEWLINES] * (num_crops - 1) if num_crops else []
    ids = list(sequence)
    for between in betweens:
        ids += _encode(tokenizer, between) + sequence
    return ImageRun(PREAMBLE + NEWLINES if num_crops else NEWLINES, tuple(ids), NEWLINES)


def soft_token_mask(range_ids: Sequence[int], soft: int) -> np.ndarray:
    """bool ``[L]``: which tokens of a placeholder range are ``<image_soft_token>`` (each takes the tower's next
    row); the others are text, embedded as such."""
    return np.asarray(range_ids, dtype=np.int64) == soft


def bidirectional_spans(token_ids: Sequence[int] | np.ndarray, soft: int) -> list[tuple[int, int]]:
    """``(start, stop)`` of each maximal run of ``<image_soft_token>`` ids, in order: the groups whose tokens
    attend to each other both ways (transformers' ``token_type_ids == 1`` blocks, one per image sequence)."""
    return list(token_runs(token_ids, soft))


def marker_positions(token_ids: Sequence[int], boi: int) -> list[int]:
    return [i for i, t in enumerate(token_ids) if t == boi]


def _joined(parts: list[str | tuple[int, ...]], tokenizer: TextTokenizer) -> list[int]:
    """The ids of a chunk between special tokens: id runs (the prompt's) and text (an image's lead or tail).

    Id runs alone are kept as they are. With text, each id run that decodes and re-encodes to itself is taken
    as its text and the chunk's text tokenized as one; a run that does not is kept, the text around it
    tokenized on its own.
    """
    if all(isinstance(part, tuple) for part in parts):
        return [t for part in parts for t in part]
    out: list[int] = []
    text = ""
    for part in parts:
        if isinstance(part, tuple) and part:
            decoded = tokenizer.decode(list(part))
            if _encode(tokenizer, decoded) == list(part):
                part = decoded
            else:
                out += _encode(tokenizer, text) + list(part)
                text = ""
                continue
        if isinstance(part, str):
            text += part
    return out + _encode(tokenizer, text)


def splice_images(token_ids: Sequence[int], runs: Sequence[ImageRun], tokenizer: TextTokenizer, *, boi: int,
                  special_ids: Collection[int]) -> tuple[tuple[int, ...], tuple[tuple[int, int], ...]]:
    """Replace the i-th ``<start_of_image>`` (``boi``) by ``runs[i]``, as transformers tokenizes the expanded text.

    ``special_ids``: the tokenizer's special tokens (added tokens marked special), where its text splits.

    Returns:
      The new token ids and one ``(offset, length)`` placeholder range per image (its ``range_ids``).

    Raises:
      ValueError: the number of markers differs from ``len(runs)`` (naming the markers' positions).
    """
    positions = marker_positions(token_ids, boi)
    if len(positions) != len(runs):
        where = f" at prompt positions {positions}" if positions else ""
        raise ValueError(f"the prompt has {len(positions)} <start_of_image> marker(s) (id {boi}){where}, but "
                         f"{len(runs)} image(s) were given; put one <start_of_image> in the prompt per image")
    out: list[int] = []
    ranges: list[tuple[int, int]] = []
    parts: list[str | tuple[int, ...]] = []
    stretch: list[int] = []
    queue = iter(runs)
    for token in token_ids:
        if token != boi and token not in special_ids:
            stretch.append(token)
            continue
        parts.append(tuple(stretch))
        stretch = []
        if token == boi:
            run = next(queue)
            out += _joined([*parts, run.lead], tokenizer)
            ranges.append((len(out), len(run.range_ids)))
            out += run.range_ids
            parts = [run.tail]
        else:
            out += _joined(parts, tokenizer) + [token]
            parts = []
    out += _joined([*parts, tuple(stretch)], tokenizer)
    return tuple(out), tuple(ranges)
