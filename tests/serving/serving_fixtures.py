"""Shared pieces of the serving tests: images as data URLs, a local HTTP file server, page accounting."""

from __future__ import annotations

import base64
import contextlib
import functools
import http.client
import http.server
import io
import json
import os
import re
import threading
import time
from collections.abc import Iterator

from PIL import Image

from tests.engine.engine_fixtures import picture


def data_url(image: Image.Image, fmt: str = "PNG") -> str:
    buf = io.BytesIO()
    image.save(buf, fmt)
    return f"data:image/{fmt.lower()};base64," + base64.b64encode(buf.getvalue()).decode()


def image_message(url: str, text: str = "What is shown?") -> list[dict]:
    return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                         {"type": "text", "text": text}]}]


@functools.cache
def image(seed: int, height: int = 30, width: int = 30) -> Image.Image:
    return picture(height, width, seed)


@contextlib.contextmanager
def file_server(root: str) -> Iterator[str]:
    """Serve ``root`` over HTTP on 127.0.0.1 (a free port); yields the base URL."""
    handler = functools.partial(_QuietHandler, directory=root)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass

    def copyfile(self, source, outputfile) -> None:
        try:
            super().copyfile(source, outputfile)
        except (ConnectionResetError, BrokenPipeError):  # the client stopped reading: its limit, not a fault
            pass


def closed_port_url() -> str:
    """An http URL on 127.0.0.1 where nothing listens."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/image.png"


def write_png(path: str, image: Image.Image) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    image.save(path, "PNG")
    return path


def wait_until_idle(engine, timeout_s: float = 60.0) -> bool:
    """Poll until the engine holds no request and every KV page is free again."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        idle = not engine.scheduler.waiting and not engine.scheduler.running
        pages_free = all(a.num_free_pages == engine.memory.num_pages - 1 for a in engine.allocators)
        if idle and pages_free:
            return True
        time.sleep(0.05)
    return False


#: What no answer may hold: a traceback, an exception's class, a Python repr or address, a server path.
LEAKS = re.compile(r"Traceback|File \"|\b\w+(Error|Exception):|0x[0-9a-fA-F]{6,}|object at|<[\w.]+ object|"
                   r"/tmp/|/work/|/root\b|/home/|site-packages|\.py\b")


def raw_request(url: str, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """One HTTP request with exactly these bytes: (status, lower-cased headers, body)."""
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        connection.request(method, path, body=body, headers={"Content-Type": "application/json", **(headers or {})})
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def assert_clean_error(status: int, headers: dict[str, str], body: bytes) -> dict:
    """An error answer that names its request id (header and body agree) and leaks nothing; returns its error."""
    assert 400 <= status < 600, status
    text = body.decode("utf-8")
    assert not LEAKS.search(text), text
    error = json.loads(text)["error"]
    assert set(error) >= {"message", "type", "param", "code", "request_id"}
    assert headers["x-request-id"] == error["request_id"] and error["request_id"].startswith("req-")
    return error
