"""Chat messages (OpenAI's shape) taken apart: the conversation a chat template renders, its images and videos.

A message is ``{"role": "system" | "developer" | "user" | "assistant", "content": str | [part, ...]}``;
a part is ``{"type": "text", "text": ...}``, ``{"type": "image_url", "image_url": {"url": ...}}``,
``{"type": "video_url", "video_url": {"url": ...}}`` (vLLM's), or, offline, a PIL image as
``{"type": "image", "image": img}`` (transformers' form) or ``{"type": "image_pil", "image_pil": img}``
(vLLM's), and a video's frames as ``{"type": "video", "video": frames}`` (any form
``multi_modal_data["video"]`` takes for one video). Every mistake is a ``ValueError`` naming the
message and part.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from PIL import Image

#: Roles a conversation may hold; "developer" (OpenAI's newer name) is rendered as "system".
ROLES = ("system", "developer", "user", "assistant")


@dataclasses.dataclass(frozen=True)
class ImageRef:
    """One image of a conversation: a URL still to load, or a PIL image given directly.

    Attributes:
      source: the URL (``data:``, ``http(s)://``, ``file://``) or the image.
      where: names it in errors, e.g. "message 1, part 0".
    """

    source: str | Image.Image
    where: str


@dataclasses.dataclass(frozen=True)
class VideoRef:
    """One video of a conversation: a URL still to load and decode, or frames given directly.

    Attributes:
      source: the URL (``data:``, ``http(s)://``, ``file://``), or the video as ``multi_modal_data`` takes it.
      where: names it in errors, e.g. "message 1, part 0".
    """

    source: Any
    where: str


@dataclasses.dataclass(frozen=True)
class ParsedChat:
    """Messages taken apart.

    Attributes:
      conversation: ``[{"role", "content": [{"type": "text", "text"} | {"type": "image"} | {"type": "video"}]}]``,
        what the chat template renders (each image or video part stands where its placeholder goes).
      images: the images, in the order their placeholders appear.
      videos: the videos, in the order their placeholders appear.
    """

    conversation: list[dict[str, Any]]
    images: list[ImageRef]
    videos: list[VideoRef] = dataclasses.field(default_factory=list)


def parse_messages(messages: Any) -> ParsedChat:
    """Check ``messages`` and take them apart (nothing is fetched or decoded yet).

    Raises:
      ValueError: not a non-empty list of messages; an unknown role or part type; a part
        without its field; content of the wrong type.
    """
    if isinstance(messages, (str, bytes, Mapping)) or not isinstance(messages, Sequence) or not messages:
        raise ValueError("messages must be a non-empty list of {'role': ..., 'content': ...} dicts")
    conversation, media = [], _Media([], [])
    for m, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise ValueError(f"message {m} must be a dict with 'role' and 'content', got {type(message).__name__}")
        role = message.get("role")
        if role not in ROLES:
            raise ValueError(f"message {m} has role {role!r}; expected one of {', '.join(ROLES)} "
                             "(tool calls are not supported)")
        parts = _content_parts(message.get("content"), m, role, media)
        conversation.append({"role": "system" if role == "developer" else role, "content": parts})
    return ParsedChat(conversation, media.images, media.videos)


class _Media(NamedTuple):
    images: list[ImageRef]
    videos: list[VideoRef]


def _content_parts(content: Any, m: int, role: str, media: _Media) -> list[dict[str, Any]]:
    if content is None and role == "assistant":
        return [{"type": "text", "text": ""}]
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if isinstance(content, Mapping) or not isinstance(content, Sequence):
        raise ValueError(f"message {m}: content must be a string or a list of parts, got {type(content).__name__}")
    parts = []
    for p, part in enumerate(content):
        where = f"message {m}, part {p}"
        kind = part.get("type") if isinstance(part, Mapping) else None
        if kind == "text":
            if not isinstance(part.get("text"), str):
                raise ValueError(f"{where}: a text part needs 'text' (a string)")
            parts.append({"type": "text", "text": part["text"]})
        elif kind in ("image_url", "image", "image_pil"):
            if role not in ("user", "system", "developer"):
                raise ValueError(f"{where}: images may only be sent in user messages, not {role!r} ones")
            media.images.append(ImageRef(_image_source(part, kind, where), where))
            parts.append({"type": "image"})
        elif kind in ("video_url", "video"):
            if role not in ("user", "system", "developer"):
                raise ValueError(f"{where}: videos may only be sent in user messages, not {role!r} ones")
            media.videos.append(VideoRef(_video_source(part, kind, where), where))
            parts.append({"type": "video"})
        else:
            shown = kind if kind is not None else type(part).__name__
            raise ValueError(f"{where} has type {shown!r}; expected 'text', 'image_url' or 'video_url'")
    return parts


def _video_source(part: Mapping, kind: str, where: str) -> Any:
    value = part.get(kind)
    if kind == "video_url":
        url = value.get("url") if isinstance(value, Mapping) else value
        if not isinstance(url, str) or not url:
            raise ValueError(f"{where}: a video_url part needs video_url.url (a string)")
        return url
    if value is None or isinstance(value, (str, bytes)):
        raise ValueError(f"{where}: a 'video' part needs 'video' (frames: a uint8 array [frames, height, width, 3], "
                         f"a list of PIL images, or (frames, {{'fps': ...}})); send a URL as a video_url part")
    return value


def _image_source(part: Mapping, kind: str, where: str) -> str | Image.Image:
    value = part.get(kind)
    if kind == "image_url":
        url = value.get("url") if isinstance(value, Mapping) else value
        if not isinstance(url, str) or not url:
            raise ValueError(f"{where}: an image_url part needs image_url.url (a string)")
        return url
    if not isinstance(value, Image.Image):
        raise ValueError(f"{where}: an {kind!r} part needs {kind!r} (a PIL image), got {type(value).__name__}")
    return value
