"""Serving: chat through the checkpoint's own template (``mmjax.chat``) and an OpenAI-compatible
HTTP server (``mmjax serve``, ``mmjax.serving.server``)."""

from mmjax.serving.chat import chat, chat_prompt
from mmjax.serving.media import MediaError, MediaLimits

__all__ = ["MediaError", "MediaLimits", "chat", "chat_prompt"]
