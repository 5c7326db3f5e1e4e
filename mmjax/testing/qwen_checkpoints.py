"""Tiny random Qwen2.5-VL and Qwen3-VL checkpoints, written by transformers itself, in the Hub layout.

No model hub is reachable where the tests run, so a checkpoint is made on the
spot: transformers' ``Qwen2_5_VLForConditionalGeneration`` / ``Qwen3VLForConditionalGeneration``
built from a ``config.json`` in the Hub's own form, every parameter re-drawn from
a seeded generator, its weights saved by ``save_pretrained``; beside them a
byte-level BPE tokenizer holding the real Qwen special tokens, the Instruct chat
template, and the image and video processor configs with small pixel budgets.
mmjax loads it through the same code as a user's checkpoint.

Two layouts:

- ``"hub"``: the files of ``Qwen/Qwen2.5-VL-*-Instruct`` / ``Qwen/Qwen3-VL-*-Instruct``
  (``config.json``, ``generation_config.json``, ``model.safetensors``,
  ``preprocessor_config.json``, ``video_preprocessor_config.json``, ``chat_template.json``,
  ``tokenizer.json``, ``tokenizer_config.json``, ``vocab.json``, ``merges.txt``).
- ``"save_pretrained"``: that checkpoint loaded by transformers and saved again with
  ``model.save_pretrained`` and ``processor.save_pretrained`` (transformers 5's
  ``config.json``, ``processor_config.json`` with both sub-processors, ``chat_template.jinja``,
  no preprocessor, vocab or merges files).

The sizes are a spec's (``qwen_specs``): keyword overrides replace its fields.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import replace
from typing import Any, Literal

from mmjax.testing.checkpoints import _randomize
from mmjax.testing.qwen_chat_templates import QWEN2_5_VL_CHAT_TEMPLATE, QWEN3_VL_CHAT_TEMPLATE
from mmjax.testing.qwen_hf_processor import VideoConfigStandIn, video_processors_checkable
from mmjax.testing.qwen_hub_configs import (
    chat_template_json,
    generation_config,
    model_config,
    preprocessor_config,
    video_preprocessor_config,
)
from mmjax.testing.qwen_specs import TinyQwen2_5VLSpec, TinyQwen3VLSpec, TinyQwenSpec
from mmjax.testing.qwen_tokenizer import write_hub_tokenizer

Layout = Literal["hub", "save_pretrained"]


def make_tiny_qwen2_5_vl_checkpoint(
    path: str | os.PathLike, *, seed: int = 0, layout: Layout = "hub", shard: bool = False, **overrides: Any
) -> str:
    """Write a tiny random Qwen2.5-VL checkpoint to ``path``; return ``path``.

    ``overrides`` are ``TinyQwen2_5VLSpec`` fields (e.g. ``tie_word_embeddings=True``,
    ``max_pixels=16 * 28 * 28``, ``text_config={"rope_theta": 1e4}``). ``shard=True``
    splits the weights over several files with a ``model.safetensors.index.json``.
    """
    return write_tiny_qwen_checkpoint(path, replace(TinyQwen2_5VLSpec(), **overrides), seed, layout, shard)


def make_tiny_qwen3_vl_checkpoint(
    path: str | os.PathLike, *, seed: int = 0, layout: Layout = "hub", shard: bool = False, **overrides: Any
) -> str:
    """Write a tiny random Qwen3-VL checkpoint to ``path``; return ``path``. ``overrides``: ``TinyQwen3VLSpec``."""
    return write_tiny_qwen_checkpoint(path, replace(TinyQwen3VLSpec(), **overrides), seed, layout, shard)


def write_tiny_qwen_checkpoint(
    path: str | os.PathLike, spec: TinyQwenSpec, seed: int = 0, layout: Layout = "hub", shard: bool = False
) -> str:
    """Write the checkpoint ``spec`` describes, with weights drawn from ``seed``, in ``layout``."""
    path = os.fspath(path)
    if layout == "hub":
        _write_hub_checkpoint(path, spec, seed, shard)
    elif layout == "save_pretrained":
        with tempfile.TemporaryDirectory(prefix="mmjax-qwen-hub-") as hub:
            _write_hub_checkpoint(hub, spec, seed, shard)
            _resave(hub, path, shard)
    else:
        raise ValueError(f"layout must be 'hub' or 'save_pretrained', got {layout!r}")
    return path


def _write_hub_checkpoint(path: str, spec: TinyQwenSpec, seed: int, shard: bool) -> None:
    import torch  # the reference implementation; only test code needs it
    from transformers import AutoConfig

    os.makedirs(path, exist_ok=True)
    template = QWEN2_5_VL_CHAT_TEMPLATE if isinstance(spec, TinyQwen2_5VLSpec) else QWEN3_VL_CHAT_TEMPLATE
    max_length = 131_072 if isinstance(spec, TinyQwen2_5VLSpec) else 262_144
    write_hub_tokenizer(
        path, bpe_vocab_size=spec.bpe_vocab_size, added_tokens=spec.added_tokens, chat_template=template,
        model_max_length=max_length,
    )  # fmt: skip
    _write_json(path, "config.json", model_config(spec))
    config = AutoConfig.from_pretrained(path)  # the model is built from the Hub file, as a user's would be
    torch.manual_seed(seed)
    model = _model_class(spec)(config).eval()
    _randomize(model, seed)
    model.save_pretrained(path, max_shard_size=_shard_size(shard))
    for name, content in (  # save_pretrained wrote transformers 5's config files: put the Hub's back
        ("config.json", model_config(spec)),
        ("generation_config.json", generation_config(spec)),
        ("preprocessor_config.json", preprocessor_config(spec)),
        ("video_preprocessor_config.json", video_preprocessor_config(spec)),
        ("chat_template.json", chat_template_json(template)),
    ):
        _write_json(path, name, content)


def _resave(hub: str, path: str, shard: bool) -> None:
    """Load the Hub checkpoint ``hub`` with transformers and ``save_pretrained`` model and processor to ``path``."""
    from transformers import AutoImageProcessor, AutoModelForImageTextToText, AutoTokenizer
    from transformers.processing_utils import ProcessorMixin

    AutoModelForImageTextToText.from_pretrained(hub).save_pretrained(path, max_shard_size=_shard_size(shard))
    with open(os.path.join(hub, "preprocessor_config.json"), encoding="utf-8") as f:
        processor_class = ProcessorMixin.get_possibly_dynamic_module(json.load(f)["processor_class"])
    with open(os.path.join(hub, "video_preprocessor_config.json"), encoding="utf-8") as f:
        video = VideoConfigStandIn(**json.load(f))
    with open(os.path.join(hub, "chat_template.json"), encoding="utf-8") as f:
        template = json.load(f)["chat_template"]
    with video_processors_checkable():
        processor = processor_class(
            image_processor=AutoImageProcessor.from_pretrained(hub), tokenizer=AutoTokenizer.from_pretrained(hub),
            video_processor=video, chat_template=template,
        )  # fmt: skip
    processor.save_pretrained(path)


def _model_class(spec: TinyQwenSpec) -> type:
    from transformers import Qwen2_5_VLForConditionalGeneration as Qwen2_5_VL
    from transformers import Qwen3VLForConditionalGeneration as Qwen3VL

    return Qwen2_5_VL if isinstance(spec, TinyQwen2_5VLSpec) else Qwen3VL


def _shard_size(shard: bool) -> str:
    return "40KB" if shard else "10GB"


def _write_json(directory: str, name: str, content: dict[str, Any]) -> None:
    with open(os.path.join(directory, name), "w", encoding="utf-8") as f:
        json.dump(content, f, indent=2, ensure_ascii=False)
        f.write("\n")
