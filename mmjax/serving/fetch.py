"""Fetching an ``http(s)`` image (or video) so that a client cannot point the server inward or hold it up.

Each hop (the URL, then every redirect, at most ``max_redirects``) is parsed by httpx2, must be
``http(s)`` and on an allowed domain, is resolved once, and every address it resolves to must be
public unless the operator allowed private ones; the connection then goes to the address that was
checked (httpcore2 with a network backend pinned to it; TLS still verifies the host name). One
deadline covers the whole fetch: every connect, read and write waits at most what is left of it,
so a server that drips a byte a second is cut off when the deadline passes. At most
``max_fetches_in_flight`` fetches run at once in the process.

Errors say what was refused (a non-public address, a domain not allowed, a redirect too many)
without saying what lies behind a refused address or why a connection failed.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Iterable
from typing import Any, NamedTuple

import httpcore2
import httpx2

from mmjax.serving.addresses import IPAddress, host_allowed, non_public_reason, resolve
from mmjax.serving.media_limits import MediaBusy, MediaError, MediaKind, MediaLimits

log = logging.getLogger(__name__)

_REDIRECTS = (301, 302, 303, 307, 308)


def fetch_image_bytes(url: str, limits: MediaLimits, where: str) -> bytes:
    """The body of ``url`` (at most ``limits.max_image_bytes``), following checked redirects.

    Raises:
      MediaBusy: no fetch slot came free before the deadline.
      MediaError: URL fetching is off, a hop is refused, the deadline passed, the answer is not
        a 200, is malformed, or is too large.
    """
    return fetch_media_bytes(url, limits, where, "image")


def fetch_media_bytes(url: str, limits: MediaLimits, where: str, kind: MediaKind) -> bytes:
    """``fetch_image_bytes`` for an image or a video (``kind``: its byte cap, its name in errors).

    Images and videos share the fetch slots (``max_fetches_in_flight``) and the deadline.
    """
    if not limits.allow_url_fetch:
        raise MediaError(f"{where}: this server does not fetch http(s) {kind} URLs; send the {kind} as a "
                         f"data:{kind}/...;base64 URL")
    deadline = time.monotonic() + limits.fetch_timeout_s
    slots = _fetch_slots(limits.max_fetches_in_flight)
    if not slots.acquire(timeout=limits.fetch_timeout_s):
        raise MediaBusy(f"{where}: the server is fetching as many {kind}s as it allows at once; try again shortly")
    try:
        return _follow(_parse(url, where, kind), _Fetch(limits, deadline, where, kind))
    finally:
        slots.release()


class _Fetch(NamedTuple):
    """What every hop of one fetch needs."""

    limits: MediaLimits
    deadline: float
    where: str
    kind: MediaKind

    @property
    def max_bytes(self) -> int:
        return self.limits.max_bytes(self.kind)


@functools.cache
def _fetch_slots(cap: int) -> threading.BoundedSemaphore:
    return threading.BoundedSemaphore(cap)


def _parse(url: str, where: str, kind: MediaKind = "image") -> httpx2.URL:
    try:
        parsed = httpx2.URL(url)
    except (httpx2.InvalidURL, ValueError, UnicodeError):
        raise MediaError(f"{where}: the {kind} URL is not a valid URL") from None
    if parsed.scheme not in ("http", "https") or not parsed.raw_host:
        raise MediaError(f"{where}: only http(s) {kind} URLs with a host are fetched")
    return parsed


def _follow(url: httpx2.URL, fetch: _Fetch) -> bytes:
    limits, where, kind = fetch.limits, fetch.where, fetch.kind
    for hop in range(limits.max_redirects + 1):
        address = _checked_address(url, limits, where, "a redirect" if hop else f"the {kind} URL")
        status, location, body = _get(url, address, fetch)
        if status in _REDIRECTS and location is not None:
            try:
                url = _parse(str(url.join(location)), where, kind)
            except MediaError:
                raise MediaError(f"{where}: the {kind} URL redirects to a URL that is not http(s)") from None
            continue
        if status != 200:
            raise MediaError(f"{where}: the {kind} URL answered HTTP {status}")
        return body
    raise MediaError(f"{where}: the {kind} URL redirects more than {limits.max_redirects} times")


def _checked_address(url: httpx2.URL, limits: MediaLimits, where: str, what: str) -> IPAddress:
    host = url.raw_host.decode("ascii")
    if not host_allowed(host, limits.allowed_media_domains):
        raise MediaError(f"{where}: {what} names a host outside the server's allowed media domains")
    try:
        addresses = resolve(host, url.port or (443 if url.scheme == "https" else 80))
    except (OSError, UnicodeError, ValueError):
        raise MediaError(f"{where}: {what} names a host that does not resolve") from None
    if not limits.allow_private_addresses:
        for address in addresses:
            reason = non_public_reason(address)
            if reason is not None:
                raise MediaError(f"{where}: {what} resolves to a non-public ({reason}) address; this server "
                                 "only fetches from public addresses")
    return addresses[0]


def _get(url: httpx2.URL, address: IPAddress, fetch: _Fetch) -> tuple[int, str | None, bytes]:
    """One GET to ``address``: (status, Location header, body of a 200) or MediaError."""
    limits, where, kind = fetch.limits, fetch.where, fetch.kind
    request = httpcore2.Request("GET", httpcore2.URL(scheme=url.raw_scheme, host=url.raw_host, port=url.port,
                                                     target=url.raw_path),
                                headers=[(b"Host", url.netloc), (b"User-Agent", b"mmjax"),
                                         (b"Accept", f"{kind}/*".encode()), (b"Accept-Encoding", b"identity")])
    backend = _PinnedBackend(str(address), fetch.deadline)
    try:
        with httpcore2.ConnectionPool(network_backend=backend, max_connections=1, retries=0,
                                      ssl_context=httpx2.create_ssl_context(trust_env=False)) as pool:
            with pool.stream(request.method, request.url, headers=request.headers) as response:
                location = _header(response.headers, b"location")
                if response.status != 200:
                    return response.status, location, b""
                return 200, None, _read_body(response, fetch)
    except MediaError:
        raise
    except httpcore2.TimeoutException:
        raise MediaError(f"{where}: the {kind} URL did not arrive within {limits.fetch_timeout_s} s") from None
    except httpcore2.RemoteProtocolError:
        raise MediaError(f"{where}: the {kind} URL's server sent a malformed HTTP response") from None
    except (httpcore2.NetworkError, httpcore2.ProtocolError, OSError) as err:
        log.info("%s fetch failed: %s: %s", kind, type(err).__name__, err)
        raise MediaError(f"{where}: could not fetch the {kind} URL") from None


def _header(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> str | None:
    for key, value in headers:
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def _read_body(response: Any, fetch: _Fetch) -> bytes:
    where, kind, cap = fetch.where, fetch.kind, fetch.max_bytes
    declared = _header(response.headers, b"content-length")
    if declared is not None and declared.strip().isdigit() and int(declared) > cap:
        raise MediaError(f"{where}: the {kind} URL's {kind} is {int(declared)} bytes; the server allows at most "
                         f"{cap} per {kind}")
    chunks, size = [], 0
    for chunk in response.iter_stream():
        size += len(chunk)
        if size > cap:
            raise MediaError(f"{where}: the {kind} URL's {kind} is larger than the {cap} bytes "
                             f"the server allows per {kind}")
        chunks.append(chunk)
    return b"".join(chunks)


class _DeadlineStream(httpcore2.NetworkStream):
    """A network stream whose every operation waits at most until ``deadline`` (time.monotonic)."""

    def __init__(self, inner: httpcore2.NetworkStream, deadline: float):
        self._inner, self._deadline = inner, deadline

    def _left(self, timeout: float | None, kind: type[Exception]) -> float:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise kind("the fetch deadline passed")
        return left if timeout is None else min(timeout, left)

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, self._left(timeout, httpcore2.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, self._left(timeout, httpcore2.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(self, ssl_context: Any, server_hostname: str | None = None,
                  timeout: float | None = None) -> httpcore2.NetworkStream:
        inner = self._inner.start_tls(ssl_context, server_hostname, self._left(timeout, httpcore2.ConnectTimeout))
        return _DeadlineStream(inner, self._deadline)

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _PinnedBackend(httpcore2.NetworkBackend):
    """Connects to one checked address whatever host the request names (TLS still checks the name)."""

    def __init__(self, address: str, deadline: float):
        self._address, self._deadline = address, deadline
        self._backend = httpcore2.SyncBackend()

    def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                    socket_options: Iterable[Any] | None = None) -> httpcore2.NetworkStream:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise httpcore2.ConnectTimeout("the fetch deadline passed")
        stream = self._backend.connect_tcp(self._address, port, min(left, timeout or left),
                                           socket_options=socket_options)
        return _DeadlineStream(stream, self._deadline)

    def connect_unix_socket(self, path: str, timeout: float | None = None,
                            socket_options: Iterable[Any] | None = None) -> httpcore2.NetworkStream:
        raise httpcore2.ConnectError("image fetches do not use unix sockets")
