"""Shared pieces of the serving tests: images as data URLs, a local HTTP file server, page accounting."""

from __future__ import annotations

import base64
import contextlib
import functools
import http.server
import io
import os
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
