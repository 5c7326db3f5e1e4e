"""What a client is told when its request fails: OpenAI's error JSON with a request id, and nothing of
the server's insides.

Every response carries ``X-Request-Id``; a 5xx says only that the server failed and names that id,
while the details (the exception, the traceback) go to the server's log under the same id. A 4xx
message says what was wrong with the request, scrubbed of anything that names the server: its
directories, Python object reprs and memory addresses.
"""

from __future__ import annotations

import json
import os
import re
import sys
import tempfile
import uuid
from collections.abc import Iterable
from typing import Any

from starlette.responses import JSONResponse

#: The longest error message a client is sent.
MAX_MESSAGE_CHARS = 2000

_OBJECT_REPR = re.compile(r"<[\w.]+ object at 0x[0-9a-fA-F]+>")
_ADDRESS = re.compile(r"\b0x[0-9a-fA-F]{6,}\b")


class HTTPError(Exception):
    """Answer with ``status`` and OpenAI's error JSON (``retry_after``: seconds, sent as ``Retry-After``)."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, retry_after: int | None = None):
        super().__init__(message)
        self.status, self.kind, self.param, self.code, self.retry_after = status, kind, param, code, retry_after


def new_request_id() -> str:
    return f"req-{uuid.uuid4().hex[:24]}"


class Scrubber:
    """Removes what would tell a client about the server from a message meant for it."""

    def __init__(self, private_paths: Iterable[str | None] = ()):
        roots = {sys.prefix, sys.exec_prefix, os.getcwd(), os.path.expanduser("~"), tempfile.gettempdir(),
                 os.path.dirname(os.path.dirname(os.path.abspath(__file__)))}
        roots |= {os.path.abspath(p) for p in private_paths if p}
        roots |= {os.path.realpath(r) for r in roots}
        self._roots = sorted((r for r in roots if len(r) > 1), key=len, reverse=True)

    def __call__(self, message: str) -> str:
        for root in self._roots:
            message = message.replace(root, "<server path>")
        message = _ADDRESS.sub("0x…", _OBJECT_REPR.sub("<object>", message))
        return message if len(message) <= MAX_MESSAGE_CHARS else message[:MAX_MESSAGE_CHARS] + "…"


def error_response(status: int, message: str, kind: str, request_id: str, param: str | None = None,
                   code: str | None = None, retry_after: int | None = None) -> JSONResponse:
    """OpenAI's error JSON, ASCII-escaped (a lone surrogate a client sent cannot break it); the
    middleware adds ``X-Request-Id``."""
    headers = {} if retry_after is None else {"Retry-After": str(retry_after)}
    return AsciiJSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code,
                                        "request_id": request_id}}, status, headers=headers)


def internal_error_message(request_id: str) -> str:
    return f"the server failed to handle this request; its log has the details under request id {request_id}"


class AsciiJSONResponse(JSONResponse):
    """JSON with every non-ASCII character escaped: valid UTF-8 whatever strings it holds."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")
