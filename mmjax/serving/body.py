"""Reading a request body: within a byte limit, as strict JSON, and only JSON a request could mean.

Refused with a 4xx before any validation: a body over the limit (413), bytes that are not UTF-8 JSON,
``NaN`` / ``Infinity``, an integer of more than ``MAX_INT_DIGITS`` digits, nesting deeper than
``MAX_DEPTH``, and strings holding a lone surrogate (``"\\ud800"``), which no UTF-8 text can.
A client that hangs up mid-body gets no answer and costs one log line.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from starlette.requests import ClientDisconnect, Request

from mmjax.serving.errors import HTTPError

log = logging.getLogger(__name__)

#: Deeper JSON than any request needs (a chat message part is 5 levels down).
MAX_DEPTH = 32
#: Digits of the longest integer taken: int64 needs 19.
MAX_INT_DIGITS = 20


class ClientGone(Exception):
    """The client closed the connection before its request was read."""


async def read_json(request: Request, limit: int) -> Any:
    """The request's body parsed as JSON (``HTTPError`` 400/413 for a refused body, ``ClientGone``)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise HTTPError(413, f"the request body is {declared} bytes; the server takes at most {limit}")
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise HTTPError(413, f"the request body is larger than the {limit} bytes the server takes")
            chunks.append(chunk)
    except ClientDisconnect:
        raise ClientGone() from None
    return parse_json(b"".join(chunks))


def parse_json(raw: bytes) -> Any:
    """``raw`` as JSON, or ``HTTPError`` 400 saying what was refused."""
    try:
        value = json.loads(raw.decode("utf-8"), parse_constant=_refuse_constant, parse_int=_bounded_int)
    except _Refused as err:
        raise HTTPError(400, f"the request body is refused: {err}") from None
    except RecursionError:
        raise HTTPError(400, f"the request body is nested too deeply; the server takes at most {MAX_DEPTH} "
                        "levels") from None
    except UnicodeDecodeError as err:
        raise HTTPError(400, f"the request body is not UTF-8 (byte {err.start})") from None
    except ValueError as err:  # json.JSONDecodeError is one
        where = f" (line {err.lineno}, column {err.colno})" if isinstance(err, json.JSONDecodeError) else ""
        raise HTTPError(400, f"the request body is not valid JSON{where}") from None
    _check_tree(value)
    return value


class _Refused(ValueError):
    pass


def _refuse_constant(name: str) -> Any:
    raise _Refused(f"{name} is not a JSON number")


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise _Refused(f"an integer of {len(text.lstrip('-'))} digits; the server takes at most {MAX_INT_DIGITS}")
    return int(text)


def _check_tree(value: Any) -> None:
    """Depth and lone surrogates, iteratively (no recursion a deep body could exhaust)."""
    stack: list[tuple[Any, int, str]] = [(value, 1, "")]
    while stack:
        node, depth, path = stack.pop()
        if isinstance(node, str):
            _check_text(node, path)
            continue
        if not isinstance(node, (dict, list)):
            continue
        if depth > MAX_DEPTH:
            raise HTTPError(400, f"the request body is nested too deeply at {path or 'the top'}; the server takes "
                            f"at most {MAX_DEPTH} levels", param=path or None)
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for key, child in items:
            child_path = f"{path}.{key}" if isinstance(key, str) else f"{path}[{key}]"
            if isinstance(key, str):
                _check_text(key, child_path)
            stack.append((child, depth + 1, child_path.lstrip(".")))


def _check_text(text: str, path: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise HTTPError(400, f"{path or 'the body'}: a string holds a lone surrogate (not valid Unicode text)",
                        param=path or None) from None
