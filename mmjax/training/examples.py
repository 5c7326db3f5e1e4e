"""Training examples and their batches: a prompt (with images), the target text after it,
and optionally more turns of the same conversation.

``collate`` runs each prompt through the same ``llm.process`` the engine uses (so the
placeholders and pixel values are exactly what inference sees), appends the target's
token ids and end of sequence (then each follow-up turn's text and target), and pads the
batch to fixed shapes (``T`` a multiple of ``length_bucket``, ``B`` the batch size), so a
training loop compiles once per bucket.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from mmjax.engine.request import placeholder_rows
from mmjax.registry import ProcessedPrompt, PromptInputs
from mmjax.engine.loaded_model import LoadedModel

@dataclasses.dataclass(frozen=True)
class TrainExample:
    """One example: ``prompt`` (text, or a dict with ``multi_modal_data``) and the ``target`` text
    the model should continue it with. Only the target's tokens (and the end of sequence) are scored.

    The target is tokenized as given, without special tokens: include a leading space if the
    tokenizer expects one after the prompt (``" red"`` after ``"ASSISTANT:"`` for LLaVA's). A target may
    instead be token ids (a list or tuple of ints, e.g. an output's ``token_ids``), scored exactly as given:
    no end of sequence is added (a finished output's ids already end with it).

    ``follow_ups``: more turns about the same images, each ``(text, target)``: the text (say
    ``"USER: What shape is it? ASSISTANT:"``) follows the previous target's end of sequence,
    unscored, and its target is scored like the first. A conversation's turns share one pass
    of the vision tower and of the image tokens; the first turn's loss is exactly that of the
    example without them (attention is causal).
    """

    prompt: PromptInputs
    target: str | Sequence[int]
    follow_ups: tuple[tuple[str, str], ...] = ()


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TrainBatch:
    """A padded batch (a PyTree, an argument of ``jit``).

    Attributes:
      input_ids: i32 ``[B, T]``: prompt, target, end of sequence, then padding (0).
      positions: i32 ``[B, T]``: 0, 1, ... for real tokens, -1 for padding.
      labels: i32 ``[B, T]``: the token at each target position (scored from the logits one
        position earlier), -1 elsewhere.
      example_mm_kwargs: each row's multimodal kwargs (``ProcessedPrompt.mm_kwargs``; ``{}`` for a text
        prompt or a padding row): what ``multimodal_embeddings`` takes.
      embedding_slots: i32 ``[B, T]``: each placeholder token's row in its example's embeddings, -1 elsewhere.
      rope_positions: i32 ``[B, P, T]``: rotary positions of a model with several per token (M-RoPE), else None.
    """

    input_ids: np.ndarray
    positions: np.ndarray
    labels: np.ndarray
    example_mm_kwargs: tuple[dict[str, np.ndarray], ...]
    embedding_slots: np.ndarray
    rope_positions: np.ndarray | None = None

    @property
    def num_target_tokens(self) -> int:
        return int((np.asarray(self.labels) >= 0).sum())

    @property
    def mm_kwargs(self) -> dict[str, np.ndarray]:
        """Every row's multimodal kwargs concatenated, items in placeholder order (LLaVA's ``pixel_values``
        of the whole batch: what transformers' forward takes)."""
        keys = {k for kwargs in self.example_mm_kwargs for k in kwargs}
        return {k: np.concatenate([np.asarray(kw[k]) for kw in self.example_mm_kwargs if k in kw]) for k in keys}


def target_ids(tokenizer: Any, target: str | Sequence[int], vocab_size: int | None = None) -> list[int]:
    """The target's token ids (no special tokens) followed by the tokenizer's end of sequence; token ids as
    given (checked against the vocabulary: ``vocab_size``, the model's, default ``len(tokenizer)``; a model's
    output layer may be wider than its tokenizer, and the engine samples from all of it)."""
    if isinstance(target, (list, tuple, np.ndarray)) and not isinstance(target, str):
        ids = [int(t) for t in target]
        vocab = len(tokenizer) if vocab_size is None else vocab_size
        bad = [t for t in ids if not 0 <= t < vocab]
        if not ids or bad or any(isinstance(t, (bool, float)) for t in target):
            raise ValueError(f"token-id targets must be a non-empty sequence of ints in [0, {vocab}), got {target!r}")
        return ids
    if not isinstance(target, str) or not target:
        raise ValueError(f"a training target must be a non-empty str or token ids, got {target!r}")
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no eos_token_id: the target's end cannot be scored")
    return list(tokenizer(target, add_special_tokens=False).input_ids) + [int(eos)]


def follow_up_segments(tokenizer: Any, follow_ups: Any, vocab_size: int | None = None) -> list[tuple[list[int], bool]]:
    """``(token ids, scored)`` of each follow-up turn: its text unscored, its target and end of
    sequence scored."""
    if not isinstance(follow_ups, (tuple, list)) or not all(
            isinstance(turn, (tuple, list)) and len(turn) == 2 for turn in follow_ups):
        raise ValueError(f"follow_ups must be a sequence of (text, target) pairs, got {follow_ups!r}")
    segments = []
    for text, target in follow_ups:
        if not isinstance(text, str) or not text:
            raise ValueError(f"a follow-up turn's text must be a non-empty str, got {text!r}")
        segments += [(list(tokenizer(text, add_special_tokens=False).input_ids), False),
                     (target_ids(tokenizer, target, vocab_size), True)]
    return segments


def collate(llm: LoadedModel, examples: Sequence[TrainExample], *, batch_size: int | None = None,
            length_bucket: int = 64) -> TrainBatch:
    """Process, tokenize and pad ``examples`` into one ``TrainBatch`` of ``batch_size`` rows.

    Rows past ``len(examples)`` are padding (no tokens, nothing scored).

    Raises:
      TypeError: an example that is not a ``TrainExample``.
      ValueError: a bad prompt or target (named by index), more examples than ``batch_size``.
    """
    batch_size = len(examples) if batch_size is None else batch_size
    if not examples or len(examples) > batch_size:
        raise ValueError(f"collate takes 1 to batch_size={batch_size} examples, got {len(examples)}")
    rows, processed_rows = [], []
    vocab = model_vocab_size(llm)  # token-id targets index its logits
    for i, example in enumerate(examples):
        if not isinstance(example, TrainExample):
            raise TypeError(f"example {i} must be a TrainExample(prompt, target), got {type(example).__name__}")
        try:
            processed = llm.process(example.prompt)
            segments = [(list(processed.token_ids), False), (target_ids(llm.tokenizer, example.target, vocab), True)]
            segments += follow_up_segments(llm.tokenizer, example.follow_ups, vocab)
        except (TypeError, ValueError) as err:
            raise type(err)(f"example {i}: {err}") from err
        rows.append(segments)
        processed_rows.append(processed)
    longest = max(sum(len(ids) for ids, _ in segments) for segments in rows)
    length = -(-longest // length_bucket) * length_bucket
    input_ids = np.zeros((batch_size, length), np.int32)
    positions = np.full((batch_size, length), -1, np.int32)
    labels = np.full((batch_size, length), -1, np.int32)
    slots = np.full((batch_size, length), -1, np.int32)
    axes = {p.rope_positions.shape[0] for p in processed_rows if p.rope_positions is not None}
    rope = np.zeros((batch_size, max(axes), length), np.int32) if axes else None
    for b, (segments, processed) in enumerate(zip(rows, processed_rows)):
        n = 0
        for ids, scored in segments:
            input_ids[b, n:n + len(ids)] = ids
            if scored:
                labels[b, n:n + len(ids)] = ids
            n += len(ids)
        positions[b, :n] = np.arange(n)
        prompt_rows = placeholder_rows(processed)
        slots[b, :len(prompt_rows)] = prompt_rows
        if rope is not None:
            rope[b, :, :n] = sequence_rope_positions(processed, n, rope.shape[1])
    kwargs = tuple({k: np.asarray(v) for k, v in p.mm_kwargs.items()} for p in processed_rows)
    kwargs += ({},) * (batch_size - len(kwargs))
    return TrainBatch(input_ids, positions, labels, kwargs, slots, rope)


def model_vocab_size(llm: LoadedModel) -> int | None:
    """The width of the model's logits, from its config (no merge of the model: ``collate`` runs every step);
    None if the config does not say."""
    config = getattr(llm, "hf_config", None)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return getattr(text, "vocab_size", None)


def sequence_rope_positions(processed: ProcessedPrompt, length: int, axes: int) -> np.ndarray:
    """``int32[axes, length]``: the prompt's rotary positions, then ``index + rope_delta`` for the tokens after it."""
    out = np.arange(length, dtype=np.int32)[None].repeat(axes, 0) + np.int32(processed.rope_delta)
    if processed.rope_positions is not None:
        prompt = processed.rope_positions[:, :length]
        out[:, :prompt.shape[1]] = prompt
    return out
