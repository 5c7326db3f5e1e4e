"""The checkpoint's own chat template: where it is found, which content form it reads, how it renders.

Templates are rendered by transformers' machinery
(``tokenizer.apply_chat_template(..., tokenize=False)``), so a conversation
becomes exactly the text transformers' ``processor.apply_chat_template`` makes.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Sequence
from typing import Any, Literal

#: Where a checkpoint's chat template is looked for, in order (the processor's, then the tokenizer's).
TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json")

#: How a template reads ``message["content"]``: a list of typed parts, or one string.
ContentFormat = Literal["openai", "string"]

_PROBE = "mmjax-content-format-probe"


def find_chat_template(model_dir: str | os.PathLike | None, tokenizer: Any, override: str | None = None) -> str:
    """The chat template for a checkpoint.

    Args:
      model_dir: the checkpoint directory (searched for ``TEMPLATE_FILES``).
      tokenizer: its tokenizer (``tokenizer.chat_template``, from ``tokenizer_config.json``, comes last).
      override: a template given by the user: the Jinja text itself, or the path of a
        ``.jinja`` file or a ``chat_template.json``.

    Raises:
      ValueError: no template anywhere; the message names every place looked in.
      FileNotFoundError: ``override`` looks like a path that does not exist.
    """
    if override is not None:
        return _template_from_override(override)
    looked = []
    if model_dir is not None:
        for name in TEMPLATE_FILES:
            path = os.path.join(os.fspath(model_dir), name)
            looked.append(path)
            if os.path.isfile(path):
                return _read_template_file(path)
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):  # several named templates: the default one
        template = template.get("default")
    if isinstance(template, str) and template.strip():
        return template
    looked.append("the tokenizer's chat_template (tokenizer_config.json)")
    raise ValueError("the checkpoint has no chat template; looked in " + ", ".join(looked)
                     + "; pass one with chat_template= (mmjax.chat) or --chat-template (mmjax serve)")


def _template_from_override(override: str) -> str:
    if "{%" in override or "{{" in override:  # Jinja text
        return override
    if not os.path.isfile(override):
        raise FileNotFoundError(f"chat template {override!r} is neither Jinja text nor an existing file")
    return _read_template_file(override)


def _read_template_file(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if not path.endswith(".json"):
        return text
    try:
        template = json.loads(text)["chat_template"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"{path} is not a JSON object with a 'chat_template' string: {err}") from err
    if not isinstance(template, str):
        raise ValueError(f"{path}: 'chat_template' must be a string, got {type(template).__name__}")
    return template


@functools.lru_cache(maxsize=32)
def _content_format(template: str, tokenizer: Any) -> ContentFormat:
    parts = [{"role": "user", "content": [{"type": "text", "text": _PROBE}]}]
    try:
        text = _render(tokenizer, template, parts, add_generation_prompt=False)
    except Exception:  # noqa: BLE001 (any template error means: not a parts template)
        return "string"
    shows_repr = "'type'" in text or '"type"' in text  # a list printed whole: the template wants a string
    return "openai" if _PROBE in text and not shows_repr else "string"


def content_format(template: str, tokenizer: Any) -> ContentFormat:
    """Whether ``template`` iterates typed content parts (``"openai"``, as llava-hf's do) or reads
    ``message["content"]`` as one string (``"string"``, most text-only templates); found by rendering
    a probe message, once per template."""
    return _content_format(template, tokenizer)


def render_chat(tokenizer: Any, template: str, conversation: Sequence[dict], *, placeholder: str,
                add_generation_prompt: bool = True, continue_final_message: bool = False,
                video_placeholder: str = "") -> str:
    """The prompt text of ``conversation`` under ``template``.

    Args:
      conversation: ``[{"role": ..., "content": [{"type": "text", "text": ...} | {"type": "image"}
        | {"type": "video"}, ...]}]``.
      placeholder: the model's image placeholder text (e.g. ``"<image>"``); only a ``"string"``-format
        template needs it: each image part becomes one placeholder line before the message's text.
      video_placeholder: the same for video parts (after the images' lines).

    Raises:
      ValueError: a ``"string"``-format template, a video part and no ``video_placeholder``.
    """
    if content_format(template, tokenizer) == "string":
        if not video_placeholder and any(p["type"] == "video" for m in conversation for p in m["content"]):
            raise ValueError("the chat template reads each message as one string, and the model names no video "
                             "token (video_token_id) to stand for a video in it")
        conversation = [{**m, "content": _as_string(m["content"], placeholder, video_placeholder)}
                        for m in conversation]
    return _render(tokenizer, template, conversation, add_generation_prompt=add_generation_prompt,
                   continue_final_message=continue_final_message)


def _as_string(parts: Sequence[dict], placeholder: str, video_placeholder: str = "") -> str:
    images = sum(p["type"] == "image" for p in parts)
    videos = sum(p["type"] == "video" for p in parts)
    text = "\n".join(p["text"] for p in parts if p["type"] == "text")
    return f"{placeholder}\n" * images + f"{video_placeholder}\n" * videos + text


def _render(tokenizer: Any, template: str, conversation: Sequence[dict], **kwargs: Any) -> str:
    text = tokenizer.apply_chat_template(list(conversation), chat_template=template, tokenize=False, **kwargs)
    return text if isinstance(text, str) else text[0]
