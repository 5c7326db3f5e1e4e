"""A small Gemma-style tokenizer (SentencePiece BPE with byte fallback), written in the ``google/gemma-3-*-it`` layout.

The tiny Gemma 3 checkpoints need a tokenizer that transformers loads as it loads the Hub's: the same
pipeline (``" "`` replaced by ``"▁"``, a BPE with byte fallback and ``<unk>``, ``<bos>`` prepended, the
``▁``/byte-fallback/fuse decoder), a vocabulary learnt here in milliseconds from a fixed corpus, and the
real Gemma tokens with their real strings and kinds:

* ``<pad>`` 0, ``<eos>`` 1, ``<bos>`` 2, ``<unk>`` 3, ``<mask>`` 4, ``[multimodal]`` 5 (Gemma's own ids);
* ``<start_of_turn>``, ``<end_of_turn>`` (special, as Gemma's converter marks them);
* runs of 1 to 31 newlines, non-special added tokens (Gemma's SentencePiece user-defined symbols): the
  tokenizer splits text on the longest run first, so ``"user\\n" + "\\n\\n<start_of_image>"`` gives one
  ``"\\n\\n\\n"`` token, as Gemma's does;
* the 256 ``<0x00>``..``<0xFF>`` byte-fallback pieces, then the learnt pieces;
* ``<start_of_image>``, ``<end_of_image>`` (special), and ``<image_soft_token>`` last, added after the model's
  vocabulary as the Hub's ``added_tokens.json`` adds it (262144 there).

The ids are small, so the tiny model's vocabulary stays small; their order is Gemma's.
``write_hub_tokenizer`` writes ``tokenizer.json``, ``tokenizer_config.json``, ``special_tokens_map.json`` and
``added_tokens.json`` (the Hub's ``tokenizer.model`` is a SentencePiece binary: not written, transformers 5
reads ``tokenizer.json``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

BOI, EOI, IMAGE_SOFT = "<start_of_image>", "<end_of_image>", "<image_soft_token>"
#: The first tokens of Gemma's vocabulary, at Gemma's ids 0..5.
LEADING_TOKENS = ("<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "[multimodal]")
TURN_TOKENS = ("<start_of_turn>", "<end_of_turn>")
#: Gemma's newline runs ("\n" .. 31 x "\n"): user-defined SentencePiece symbols, non-special added tokens.
NEWLINE_RUNS = tuple("\n" * n for n in range(1, 32))
BYTE_PIECES = tuple(f"<0x{b:02X}>" for b in range(256))

_CORPUS = """
You are a helpful assistant. What is shown in this image? Describe the picture in detail.
The image shows a cat sitting on a red sofa next to a window with green plants.
How many people are in the photo? There are two people walking on the beach at sunset.
Compare the two images and tell me which one was taken at night, and why you think so.
Here is the original image and here are some crops to help you see better.
The quick brown fox jumps over the lazy dog. 0 1 2 3 4 5 6 7 8 9 10 100 2026
Read the text in the chart: revenue grew from 12 to 31 million dollars between March and October.
user model What is in this picture? Answer in one word.
""".strip().splitlines()


@dataclass(frozen=True)
class GemmaTokenIds:
    """Ids of the Gemma special tokens in the tiny tokenizer."""

    pad: int
    eos: int
    bos: int
    unk: int
    start_of_turn: int
    end_of_turn: int
    newline: int  # "\n"; the run of n newlines is newline + n - 1
    boi: int
    eoi: int
    image_soft: int
    size: int  # ids in the tokenizer (the image soft token is the last)


def _learnt_pieces(num_pieces: int) -> tuple[list[str], list[tuple[str, str]]]:
    """``num_pieces`` BPE pieces (characters and merges) learnt from the corpus with ``▁`` for spaces."""
    trainer_tokenizer = Tokenizer(models.BPE())
    trainer_tokenizer.normalizer = normalizers.Replace(" ", "▁")
    trainer_tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never")
    trainer = trainers.BpeTrainer(vocab_size=num_pieces, show_progress=False)
    trainer_tokenizer.train_from_iterator(_CORPUS * 4, trainer=trainer)
    model = json.loads(trainer_tokenizer.to_str())["model"]
    pieces = sorted(model["vocab"], key=model["vocab"].get)
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    if len(pieces) != num_pieces:
        raise AssertionError(f"the corpus gave {len(pieces)} BPE pieces, not {num_pieces}")
    return pieces, merges


def build_gemma_tokenizer(num_pieces: int = 120) -> tuple[Tokenizer, GemmaTokenIds]:
    """The tokenizer (a ``tokenizers.Tokenizer`` with Gemma's pipeline) and its special ids.

    ``num_pieces``: learnt BPE pieces (letters and merges), 60..160 for the built-in corpus.
    """
    if not 60 <= num_pieces <= 160:
        raise ValueError(f"num_pieces must be in [60, 160] for the built-in corpus, got {num_pieces}")
    pieces, merges = _learnt_pieces(num_pieces)
    head = [*LEADING_TOKENS, *TURN_TOKENS, *NEWLINE_RUNS, *BYTE_PIECES]
    vocab_list = head + [p for p in pieces if p not in head] + [BOI, EOI]
    vocab = {piece: i for i, piece in enumerate(vocab_list)}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    tokenizer.normalizer = normalizers.Replace(" ", "▁")
    tokenizer.pre_tokenizer = pre_tokenizers.Split(" ", behavior="merged_with_previous")
    tokenizer.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A <bos> $B", special_tokens=[("<bos>", vocab["<bos>"])]
    )
    specials = [*LEADING_TOKENS, *TURN_TOKENS]
    tokenizer.add_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in NEWLINE_RUNS])
    tokenizer.add_tokens([AddedToken(t, special=True, normalized=False) for t in (BOI, EOI, IMAGE_SOFT)])
    ids = GemmaTokenIds(
        pad=vocab["<pad>"], eos=vocab["<eos>"], bos=vocab["<bos>"], unk=vocab["<unk>"],
        start_of_turn=vocab["<start_of_turn>"], end_of_turn=vocab["<end_of_turn>"], newline=vocab["\n"],
        boi=vocab[BOI], eoi=vocab[EOI], image_soft=tokenizer.token_to_id(IMAGE_SOFT),
        size=tokenizer.get_vocab_size(with_added_tokens=True),
    )  # fmt: skip
    if ids.image_soft != len(vocab) or ids.size != len(vocab) + 1:
        raise AssertionError(f"<image_soft_token> got id {ids.image_soft}, expected {len(vocab)} (after the vocab)")
    return tokenizer, ids


def _added_decoder(tokenizer: Tokenizer) -> dict[str, dict[str, object]]:
    decoder = {}
    for index, token in sorted(tokenizer.get_added_tokens_decoder().items()):
        decoder[str(index)] = {
            "content": token.content, "lstrip": token.lstrip, "normalized": token.normalized, "rstrip": token.rstrip,
            "single_word": token.single_word, "special": token.special,
        }  # fmt: skip
    return decoder


def _token_entry(content: str) -> dict[str, object]:
    return {"content": content, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False}


def write_hub_tokenizer(path: str | os.PathLike, *, num_pieces: int = 120, chat_template: str | None = None,
                        processor_class: str | None = "Gemma3Processor") -> GemmaTokenIds:
    """Write the Hub's tokenizer files to ``path``; return the special ids.

    ``chat_template``: put in ``tokenizer_config.json`` (``google/gemma-3-1b-it`` keeps it there; the
    multimodal checkpoints ship ``chat_template.json`` instead). ``processor_class``: the config's key of
    that name (the multimodal checkpoints name ``Gemma3Processor``; None leaves it out).
    """
    path = os.fspath(path)
    tokenizer, ids = build_gemma_tokenizer(num_pieces)
    tokenizer.save(os.path.join(path, "tokenizer.json"))
    config: dict[str, object] = {
        "add_bos_token": True,
        "add_eos_token": False,
        "added_tokens_decoder": _added_decoder(tokenizer),
        "boi_token": BOI,
        "bos_token": "<bos>",
        "clean_up_tokenization_spaces": False,
        "eoi_token": EOI,
        "eos_token": "<eos>",
        "extra_special_tokens": {"boi_token": BOI, "eoi_token": EOI, "image_token": IMAGE_SOFT},
        "image_token": IMAGE_SOFT,
        "model_max_length": 1000000000000000019884624838656,
        "pad_token": "<pad>",
        "sp_model_kwargs": None,
        "spaces_between_special_tokens": False,
        "tokenizer_class": "GemmaTokenizer",
        "unk_token": "<unk>",
        "use_default_system_prompt": False,
    }
    if processor_class is not None:
        config["processor_class"] = processor_class
    if chat_template is not None:
        config["chat_template"] = chat_template
    _write_json(os.path.join(path, "tokenizer_config.json"), dict(sorted(config.items())))
    special_map = {
        "boi_token": BOI, "bos_token": _token_entry("<bos>"), "eoi_token": EOI, "eos_token": _token_entry("<eos>"),
        "image_token": IMAGE_SOFT, "pad_token": _token_entry("<pad>"), "unk_token": _token_entry("<unk>"),
    }  # fmt: skip
    _write_json(os.path.join(path, "special_tokens_map.json"), special_map)
    _write_json(os.path.join(path, "added_tokens.json"), {IMAGE_SOFT: ids.image_soft})
    return ids


def _write_json(file: str, value: object) -> None:
    with open(file, "w", encoding="utf-8") as f:
        json.dump(value, f, indent=2, ensure_ascii=False)
        f.write("\n")
