"""A small Qwen2-style byte-level BPE tokenizer, written in the Qwen Hub layout.

The tiny Qwen-VL checkpoints need a tokenizer that transformers loads as it loads
``Qwen/Qwen2.5-VL-*-Instruct``'s: the same pipeline (NFC, Qwen2's split regex,
byte-level BPE, no unknown token), a vocabulary learnt here in milliseconds from a
fixed corpus, and after it the real Qwen added tokens with their real strings, in
their real order (``<|endoftext|>`` first, ``<|image_pad|>`` 12 ids later, ...), so
the ids keep Qwen's offsets at the end of the vocabulary.

``write_hub_tokenizer`` writes the four files the Hub ships: ``tokenizer.json``,
``tokenizer_config.json`` (with the chat template), ``vocab.json`` and ``merges.txt``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

#: Qwen2's pre-tokenizer pattern (transformers' ``tokenization_qwen2.PRETOKENIZE_REGEX``).
QWEN2_SPLIT_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

#: (content, special) of the tokens after the BPE vocabulary, as Qwen2.5-VL's tokenizer has them (151643...151664).
QWEN2_5_VL_ADDED_TOKENS: tuple[tuple[str, bool], ...] = (
    ("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True),
    ("<|object_ref_start|>", True), ("<|object_ref_end|>", True), ("<|box_start|>", True), ("<|box_end|>", True),
    ("<|quad_start|>", True), ("<|quad_end|>", True), ("<|vision_start|>", True), ("<|vision_end|>", True),
    ("<|vision_pad|>", True), ("<|image_pad|>", True), ("<|video_pad|>", True),
    ("<tool_call>", False), ("</tool_call>", False), ("<|fim_prefix|>", False), ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False), ("<|fim_pad|>", False), ("<|repo_name|>", False), ("<|file_sep|>", False),
)  # fmt: skip

#: Qwen3-VL's: Qwen2.5-VL's, then the tool-response and thinking tags (151665...151668).
QWEN3_VL_ADDED_TOKENS = QWEN2_5_VL_ADDED_TOKENS + (
    ("<tool_response>", False), ("</tool_response>", False), ("<think>", False), ("</think>", False),
)  # fmt: skip

_CORPUS = """
You are a helpful assistant. What is shown in this image? Describe the picture in detail.
The image shows a cat sitting on a red sofa next to a window with green plants.
How many people are in the photo? There are two people walking on the beach at sunset.
Compare the two images and tell me which one was taken at night, and why you think so.
Picture 1: a mountain lake. Picture 2: a city street with cars, buses and bicycles.
Video 1: <0.5 seconds> a dog runs across the garden <1.5 seconds> and jumps over a fence.
The quick brown fox jumps over the lazy dog. 0 1 2 3 4 5 6 7 8 9 10 100 2026
Read the text in the chart: revenue grew from 12 to 31 million dollars between March and October.
The astronaut floats above the earth; a camera, a coffee cup and a rocket are visible too.
Where is the object located? Give the bounding box as JSON: {"bbox_2d": [12, 40, 96, 128]}.
""".strip().splitlines()


@dataclass(frozen=True)
class QwenTokenIds:
    """Ids of the Qwen special tokens in a tokenizer whose added tokens start at ``first_added``."""

    endoftext: int
    im_start: int
    im_end: int
    vision_start: int
    vision_end: int
    vision_pad: int
    image_pad: int
    video_pad: int

    @classmethod
    def after(cls, first_added: int) -> QwenTokenIds:
        index = {content: first_added + i for i, (content, _) in enumerate(QWEN2_5_VL_ADDED_TOKENS)}
        return cls(
            endoftext=index["<|endoftext|>"], im_start=index["<|im_start|>"], im_end=index["<|im_end|>"],
            vision_start=index["<|vision_start|>"], vision_end=index["<|vision_end|>"],
            vision_pad=index["<|vision_pad|>"], image_pad=index["<|image_pad|>"], video_pad=index["<|video_pad|>"],
        )  # fmt: skip


def train_qwen_bpe(bpe_vocab_size: int) -> Tokenizer:
    """A byte-level BPE with Qwen2's pipeline and exactly ``bpe_vocab_size`` entries (256 bytes + merges)."""
    if not 257 <= bpe_vocab_size <= 560:
        raise ValueError(f"bpe_vocab_size must be in [257, 560] for the built-in corpus, got {bpe_vocab_size}")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])  # fmt: skip
    tokenizer.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    tokenizer.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    trainer = trainers.BpeTrainer(
        vocab_size=bpe_vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tokenizer.train_from_iterator(_CORPUS * 4, trainer=trainer)
    if tokenizer.get_vocab_size() != bpe_vocab_size:
        raise AssertionError(f"the corpus gave {tokenizer.get_vocab_size()} BPE entries, not {bpe_vocab_size}")
    return tokenizer


def write_hub_tokenizer(
    path: str | os.PathLike,
    *,
    bpe_vocab_size: int,
    added_tokens: tuple[tuple[str, bool], ...],
    chat_template: str,
    model_max_length: int,
) -> QwenTokenIds:
    """Write ``tokenizer.json``, ``tokenizer_config.json``, ``vocab.json`` and ``merges.txt``; return the ids."""
    tokenizer = train_qwen_bpe(bpe_vocab_size)
    model = json.loads(tokenizer.to_str())["model"]
    tokenizer.add_tokens([AddedToken(text, special=special, normalized=False) for text, special in added_tokens])
    tokenizer.save(os.path.join(path, "tokenizer.json"))
    _write_json(os.path.join(path, "vocab.json"), model["vocab"], indent=None)
    with open(os.path.join(path, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "".join(f"{left} {right}\n" for left, right in model["merges"]))
    decoder = {
        str(bpe_vocab_size + i): {
            "content": text, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
            "special": special,
        }
        for i, (text, special) in enumerate(added_tokens)
    }  # fmt: skip
    config = {
        "add_prefix_space": False,
        "added_tokens_decoder": decoder,
        "additional_special_tokens": [text for text, special in added_tokens[1:] if special],
        "bos_token": None,
        "chat_template": chat_template,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "model_max_length": model_max_length,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }
    _write_json(os.path.join(path, "tokenizer_config.json"), config)
    return QwenTokenIds.after(bpe_vocab_size)


def _write_json(file: str, value: object, indent: int | None = 2) -> None:
    with open(file, "w", encoding="utf-8") as f:
        json.dump(value, f, indent=indent, ensure_ascii=False)
        f.write("\n")
