"""Tiny random Gemma 3 checkpoints, written by transformers itself, in the Hub layout.

No model hub is reachable where the tests run, so a checkpoint is made on the spot: transformers'
``Gemma3ForConditionalGeneration`` (or ``Gemma3ForCausalLM``) built from a ``config.json`` in the Hub's
own form, every parameter re-drawn from a seeded generator (``_randomize``: no norm weight is 0 or 1),
its weights saved by ``save_pretrained``; beside them a Gemma-style tokenizer holding the real Gemma
special and newline-run tokens (``gemma3_tokenizer``), the real chat template and the processor configs.
mmjax loads it through the same code as a user's checkpoint; transformers' ``AutoProcessor``,
``AutoTokenizer`` and ``from_pretrained`` load it too.

Files, as the Hub ships them:

- ``make_tiny_gemma3_checkpoint`` (``google/gemma-3-4b-it``): ``config.json``, ``generation_config.json``,
  ``model.safetensors`` (or shards with an index), ``preprocessor_config.json``, ``processor_config.json``,
  ``chat_template.json``, ``tokenizer.json``, ``tokenizer_config.json``, ``special_tokens_map.json``,
  ``added_tokens.json``.
- ``make_tiny_gemma3_text_checkpoint`` (``google/gemma-3-1b-it``): the same without the image files, the
  chat template inside ``tokenizer_config.json``.

The Hub's ``tokenizer.model`` (SentencePiece) is not written: transformers 5 reads ``tokenizer.json``.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from typing import Any

from mmjax.testing.checkpoints import _randomize
from mmjax.testing.gemma3_chat_template import GEMMA3_CHAT_TEMPLATE
from mmjax.testing.gemma3_hub_configs import (
    causal_lm_config,
    chat_template_json,
    generation_config,
    model_config,
    preprocessor_config,
    processor_config,
)
from mmjax.testing.gemma3_specs import TinyGemma3Spec, TinyGemma3TextSpec
from mmjax.testing.gemma3_tokenizer import write_hub_tokenizer


def make_tiny_gemma3_checkpoint(path: str | os.PathLike, *, seed: int = 0, shard: bool = False,
                                **overrides: Any) -> str:
    """Write a tiny random ``Gemma3ForConditionalGeneration`` checkpoint to ``path``; return ``path``.

    ``overrides`` are ``TinyGemma3Spec`` fields (e.g. ``mm_tokens_per_image=4``, ``sliding_window=4``,
    ``processor={"do_pan_and_scan": True}``, ``text_config={"final_logit_softcapping": 30.0}``).
    ``shard=True`` splits the weights over several files with a ``model.safetensors.index.json``.
    """
    return write_tiny_gemma3_checkpoint(path, replace(TinyGemma3Spec(), **overrides), seed, shard)


def make_tiny_gemma3_text_checkpoint(path: str | os.PathLike, *, seed: int = 0, shard: bool = False,
                                     **overrides: Any) -> str:
    """Write a tiny random ``Gemma3ForCausalLM`` checkpoint (``google/gemma-3-1b-it``'s layout); return ``path``.

    ``overrides`` are ``TinyGemma3TextSpec`` fields.
    """
    return write_tiny_gemma3_checkpoint(path, replace(TinyGemma3TextSpec(), **overrides), seed, shard)


def write_tiny_gemma3_checkpoint(path: str | os.PathLike, spec: TinyGemma3TextSpec, seed: int = 0,
                                 shard: bool = False) -> str:
    """Write the checkpoint ``spec`` describes (multimodal for a ``TinyGemma3Spec``), weights drawn from ``seed``."""
    import torch  # the reference implementation; only test code needs it
    from transformers import AutoConfig, Gemma3ForCausalLM, Gemma3ForConditionalGeneration

    path = os.fspath(path)
    os.makedirs(path, exist_ok=True)
    multimodal = isinstance(spec, TinyGemma3Spec)
    write_hub_tokenizer(path, num_pieces=spec.num_pieces, chat_template=None if multimodal else GEMMA3_CHAT_TEMPLATE,
                        processor_class="Gemma3Processor" if multimodal else None)
    config_json = model_config(spec) if multimodal else causal_lm_config(spec)
    _write_json(path, "config.json", config_json)
    config = AutoConfig.from_pretrained(path)  # the model is built from the Hub file, as a user's would be
    torch.manual_seed(seed)
    model = (Gemma3ForConditionalGeneration if multimodal else Gemma3ForCausalLM)(config).eval()
    _randomize(model, seed)
    model.save_pretrained(path, max_shard_size="100KB" if shard else "10GB")
    files = [("config.json", config_json), ("generation_config.json", generation_config(spec))]
    if multimodal:
        files += [
            ("preprocessor_config.json", preprocessor_config(spec)),
            ("processor_config.json", processor_config(spec)),
            ("chat_template.json", chat_template_json(GEMMA3_CHAT_TEMPLATE)),
        ]
    for name, content in files:  # save_pretrained wrote transformers 5's config files: put the Hub's back
        _write_json(path, name, content)
    return path


def _write_json(directory: str, name: str, content: dict[str, Any]) -> None:
    with open(os.path.join(directory, name), "w", encoding="utf-8") as f:
        json.dump(content, f, indent=2, ensure_ascii=False)
        f.write("\n")
