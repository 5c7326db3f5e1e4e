"""A TCP server on 127.0.0.1 that answers each connection with a test's own bytes: redirects, drips,
hangs and malformed HTTP that a real server library would not send. Every handler is bounded:
it ends when the server is closed (``stop`` is set) or its own loop runs out."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Iterator

#: handler(connection, request head, stop): answer one request.
Handler = Callable[[socket.socket, bytes, threading.Event], None]


@contextlib.contextmanager
def raw_server(handler: Handler) -> Iterator[tuple[int, list[bytes]]]:
    """Serve ``handler`` on 127.0.0.1; yields (port, the request heads received so far)."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)
    stop, heads, threads = threading.Event(), [], []

    def serve_one(conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            head = b""
            try:
                while b"\r\n\r\n" not in head and len(head) < 65536:
                    chunk = conn.recv(4096)
                    if not chunk:
                        return
                    head += chunk
                heads.append(head)
                handler(conn, head, stop)
            except OSError:  # the client gave up: its deadline, not a fault here
                pass

    def accept_loop() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except (TimeoutError, OSError):
                continue
            thread = threading.Thread(target=serve_one, args=(conn,), daemon=True)
            thread.start()
            threads.append(thread)

    acceptor = threading.Thread(target=accept_loop, daemon=True)
    acceptor.start()
    try:
        yield listener.getsockname()[1], heads
    finally:
        stop.set()
        acceptor.join(5)
        for thread in threads:
            thread.join(5)
        listener.close()


def answer(body: bytes, status: str = "200 OK", headers: tuple[str, ...] = ()) -> Handler:
    """A handler that sends one complete response."""
    def handle(conn: socket.socket, head: bytes, stop: threading.Event) -> None:
        lines = [f"HTTP/1.1 {status}", f"Content-Length: {len(body)}", "Connection: close", *headers]
        conn.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
    return handle


def redirect(location: str) -> Handler:
    return answer(b"", "302 Found", (f"Location: {location}",))


def drip(prefix: bytes, every_s: float = 0.2, for_s: float = 20.0) -> Handler:
    """Send ``prefix``, then one byte every ``every_s`` seconds (for at most ``for_s``)."""
    def handle(conn: socket.socket, head: bytes, stop: threading.Event) -> None:
        conn.sendall(prefix)
        for _ in range(int(for_s / every_s)):
            if stop.wait(every_s):
                return
            conn.sendall(b"x")
    return handle


def hang(release: threading.Event | None = None, for_s: float = 20.0) -> Handler:
    """Read the request and answer nothing (until ``release`` or the server stops)."""
    def handle(conn: socket.socket, head: bytes, stop: threading.Event) -> None:
        waited = 0.0
        while waited < for_s and not stop.is_set() and not (release and release.is_set()):
            stop.wait(0.05)
            waited += 0.05
    return handle
