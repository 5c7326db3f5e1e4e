"""Image fetching cannot be pointed inward or held up: non-public addresses in every spelling are refused,
the address checked is the one connected to, every redirect is checked, one deadline bounds a fetch,
fetches in flight are capped, and no error says what lies behind a refused address.

Every server here listens on 127.0.0.1; names that "resolve" elsewhere come from a patched resolver
and are refused before any connection, so no packet leaves the machine.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import ipaddress
import io
import os
import socket
import threading
import time

import pytest
from PIL import Image

import mmjax.serving.addresses as addresses
import mmjax.serving.fetch as fetch
from mmjax.serving.addresses import non_public_reason
from mmjax.serving.media import MediaBusy, MediaError, MediaLimits, load_image_url
from tests.serving.raw_http import answer, drip, hang, raw_server, redirect
from tests.serving.serving_fixtures import image

LIMITS = MediaLimits(fetch_timeout_s=5.0, max_image_bytes=64 * 1024, max_image_pixels=512 * 512)
LOOPBACK_OK = dataclasses.replace(LIMITS, allow_private_addresses=True)


def _png(seed: int = 1) -> bytes:
    buf = io.BytesIO()
    image(seed).save(buf, "PNG")
    return buf.getvalue()


def _refuse(url: str, limits: MediaLimits, match: str) -> str:
    with pytest.raises(MediaError, match=match) as refused:
        load_image_url(url, limits, "message 0, part 0")
    return str(refused.value)


@pytest.fixture
def png_server():
    with raw_server(answer(_png(), headers=("Content-Type: image/png",))) as (port, heads):
        yield port, heads


@pytest.mark.parametrize("host", [
    "127.0.0.1", "127.1", "2130706433", "0x7f000001", "0177.0.0.1", "localhost", "0.0.0.0", "0",
    "[::1]", "[::]", "[::ffff:127.0.0.1]", "[::ffff:7f00:1]",
])
def test_every_spelling_of_a_local_address_is_refused_and_nothing_is_sent(png_server, host):
    port, heads = png_server
    message = _refuse(f"http://{host}:{port}/a.png", LIMITS, r"non-public \(\w+(-\w+)?\) address|not a valid URL")
    assert heads == []  # refused before connecting
    assert str(port) not in message and "127.0.0.1" not in message


@pytest.mark.parametrize("address, reason", [
    ("10.1.2.3", "private"), ("172.16.0.1", "private"), ("192.168.1.1", "private"), ("100.64.0.1", "private"),
    ("169.254.169.254", "link-local"), ("fe80::1", "link-local"), ("fd00::1", "private"),
    ("224.0.0.1", "multicast"), ("ff02::1", "multicast"), ("240.0.0.1", "private"), ("::", "unspecified"),
    ("2002:7f00:1::", "loopback"), ("2002:a00:1::", "private"), ("64:ff9b::a9fe:a9fe", "link-local"),
    ("::ffff:10.0.0.1", "private"), ("::7f00:1", "loopback"), ("::1", "loopback"),
])
def test_non_public_addresses_are_named_by_kind(address, reason):
    assert non_public_reason(ipaddress.ip_address(address)) == reason


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2606:4700::1111", "2002:808:808::", "64:ff9b::808:808"])
def test_public_addresses_pass(address):
    assert non_public_reason(ipaddress.ip_address(address)) is None


def _fake_dns(monkeypatch, table: dict[str, list[str]]) -> list[str]:
    """Resolve the names of ``table`` (each call pops the next answer when several are listed)."""
    asked: list[str] = []
    real = socket.getaddrinfo

    def getaddrinfo(host, port, *args, **kwargs):
        if host not in table:
            return real(host, port, *args, **kwargs)
        asked.append(host)
        answers = table[host]
        ip = answers.pop(0) if len(answers) > 1 else answers[0]
        family = socket.AF_INET6 if ":" in ip else socket.AF_INET
        return [(family, socket.SOCK_STREAM, 6, "", (ip, port))]

    monkeypatch.setattr(addresses.socket, "getaddrinfo", getaddrinfo)
    return asked


def test_a_name_that_resolves_to_a_private_address_is_refused(monkeypatch):
    _fake_dns(monkeypatch, {"images.example.com": ["10.0.0.7"]})
    message = _refuse("http://images.example.com/cat.png", LIMITS, r"resolves to a non-public \(private\) address")
    assert "10.0.0.7" not in message


def test_the_connection_goes_to_the_address_that_was_checked(monkeypatch, png_server):
    port, heads = png_server
    # First answer 127.0.0.1 (allowed here), any later look-up a private address: a second resolve
    # (DNS rebinding) would have to fail, so the fetch must use the one address it checked.
    asked = _fake_dns(monkeypatch, {"pinned.test": ["127.0.0.1", "10.9.9.9"]})
    got = load_image_url(f"http://pinned.test:{port}/a.png", LOOPBACK_OK)
    assert got.size == image(1).size and asked == ["pinned.test"]
    assert f"Host: pinned.test:{port}".encode() in heads[0]


def _exempt_127_0_0_1(monkeypatch) -> None:
    """Treat 127.0.0.1 alone as public, so a loopback test server can play an outside one."""
    monkeypatch.setattr(fetch, "non_public_reason",
                        lambda a: None if str(a) == "127.0.0.1" else non_public_reason(a))


@pytest.mark.parametrize("target, match", [
    ("http://10.1.2.3/a.png", r"a redirect resolves to a non-public \(private\) address"),
    ("http://[::1]:{port}/a.png", r"a redirect resolves to a non-public \(loopback\) address"),
    ("ftp://127.0.0.1/a.png", r"redirects to a URL that is not http\(s\)"),
    ("file:///etc/passwd", r"redirects to a URL that is not http\(s\)"),
])
def test_every_redirect_is_checked_again(monkeypatch, target, match):
    _exempt_127_0_0_1(monkeypatch)
    with raw_server(redirect("unused")) as (port, _):
        with raw_server(redirect(target.format(port=port))) as (first, heads):
            _refuse(f"http://127.0.0.1:{first}/start", LIMITS, match)
            assert len(heads) == 1


def test_redirects_are_followed_up_to_the_limit(png_server):
    port, _ = png_server
    with raw_server(redirect(f"http://127.0.0.1:{port}/a.png")) as (hop, _):
        got = load_image_url(f"http://127.0.0.1:{hop}/start", LOOPBACK_OK)
        assert got.size == image(1).size
        _refuse(f"http://127.0.0.1:{hop}/start", dataclasses.replace(LOOPBACK_OK, max_redirects=0),
                r"redirects more than 0 times")
    with raw_server(redirect("/again")) as (loop_port, heads):
        _refuse(f"http://127.0.0.1:{loop_port}/again", LOOPBACK_OK, r"redirects more than 3 times")
        assert len(heads) == 4


def test_allowed_media_domains_and_the_switch_that_turns_fetching_off(monkeypatch, png_server):
    port, heads = png_server
    _fake_dns(monkeypatch, {"img.cdn.test": ["127.0.0.1"], "evil.test": ["127.0.0.1"]})
    only_cdn = dataclasses.replace(LOOPBACK_OK, allowed_media_domains=("cdn.test",))
    assert load_image_url(f"http://img.cdn.test:{port}/a.png", only_cdn).size == image(1).size
    _refuse(f"http://evil.test:{port}/a.png", only_cdn, r"outside the server's allowed media domains")
    with raw_server(redirect(f"http://evil.test:{port}/a.png")) as (hop, _):
        _fake_dns(monkeypatch, {"img.cdn.test": ["127.0.0.1"], "hop.cdn.test": ["127.0.0.1"],
                                "evil.test": ["127.0.0.1"]})
        _refuse(f"http://hop.cdn.test:{hop}/a.png", only_cdn, r"a redirect names a host outside")
    off = dataclasses.replace(LOOPBACK_OK, allow_url_fetch=False)
    _refuse(f"http://127.0.0.1:{port}/a.png", off, r"does not fetch http\(s\) image URLs")
    assert len(heads) == 1


@pytest.mark.parametrize("handler, match", [
    (drip(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"), r"did not arrive within 1.0 s"),
    (drip(b"HTTP/1.1 200 OK\r\nX-Slow: "), r"did not arrive within 1.0 s"),
    (hang(), r"did not arrive within 1.0 s"),
    (answer(b"", "2OO NOT A STATUS"), r"malformed HTTP response"),
    (lambda conn, head, stop: conn.sendall(b"HTTP/1.1 200 OK\r\n" + b"X-A: b\r\n" * 200000 + b"\r\n"),
     r"malformed HTTP response"),
    (lambda conn, head, stop: conn.sendall(b"garbage\r\n\r\n"), r"malformed HTTP response"),
])
def test_slow_hung_and_malformed_servers_end_with_a_clear_error(handler, match):
    limits = dataclasses.replace(LOOPBACK_OK, fetch_timeout_s=1.0)
    with raw_server(handler) as (port, _):
        start = time.monotonic()
        _refuse(f"http://127.0.0.1:{port}/a.png", limits, match)
        assert time.monotonic() - start < 10  # liveness: one deadline, not one per byte


def test_fetches_in_flight_are_capped(monkeypatch):
    release = threading.Event()
    one_slot = dataclasses.replace(LOOPBACK_OK, max_fetches_in_flight=1, fetch_timeout_s=0.5)
    with raw_server(hang(release)) as (port, heads), concurrent.futures.ThreadPoolExecutor(1) as pool:
        held = pool.submit(load_image_url, f"http://127.0.0.1:{port}/slow.png",
                           dataclasses.replace(one_slot, fetch_timeout_s=5.0))
        while not heads:  # the first fetch holds the only slot
            time.sleep(0.01)
        with pytest.raises(MediaBusy, match=r"fetching as many images as it allows at once"):
            load_image_url(f"http://127.0.0.1:{port}/second.png", one_slot)
        release.set()
        with pytest.raises(MediaError, match=r"malformed HTTP response|could not fetch"):
            held.result()
    assert len(heads) == 1


def test_a_url_the_parser_rejects_or_a_lone_surrogate_is_a_clear_error():
    _refuse("http://\ud800.example/a.png", LIMITS, r"not a valid URL|does not resolve")
    _refuse("http://[::1/a.png", LIMITS, r"not a valid URL")
    _refuse("http:///a.png", LIMITS, r"not a valid URL|with a host")


def test_a_fifo_or_a_directory_under_the_allowed_path_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    (tmp_path / "dir.png").mkdir()
    allowed = dataclasses.replace(LIMITS, allowed_local_media_path=str(tmp_path))
    for name in ("pipe.png", "dir.png"):
        message = _refuse(f"file://{tmp_path}/{name}", allowed, r"does not name a regular file|cannot be read")
        assert str(tmp_path) not in message
    _refuse(f"file://{tmp_path}/missing.png", allowed, r"the file:// URL does not exist$")


def test_only_allowed_formats_are_decoded():
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, "TIFF")
    tiff = "data:image/tiff;base64," + __import__("base64").b64encode(buf.getvalue()).decode()
    message = _refuse(tiff, LIMITS, r"does not decode as an image of a format the server takes \(JPEG, PNG")
    assert "BytesIO" not in message and "0x" not in message
    assert load_image_url(tiff, dataclasses.replace(LIMITS, image_formats=("TIFF",))).size == (8, 8)
