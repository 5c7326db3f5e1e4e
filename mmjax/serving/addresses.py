"""Which network addresses the server may fetch images from, and resolving a host once.

A host is resolved once (``resolve``); every address it gave is checked (``non_public_reason``) and
the fetch then connects to a checked address, so a name that resolves differently a moment later
(DNS rebinding) cannot point the connection elsewhere. Checking the resolved address, not the
spelling, covers every way of writing one: ``localhost``, ``127.1``, ``2130706433``, ``0x7f000001``,
``0177.0.0.1``, ``0.0.0.0``, ``[::1]``, ``[::ffff:127.0.0.1]``, a 6to4 or NAT64 address around a
private IPv4 one.
"""

from __future__ import annotations

import ipaddress
import socket

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_NAT64 = ipaddress.ip_network("64:ff9b::/96")  # RFC 6052: the last 32 bits are an IPv4 address


def non_public_reason(address: IPAddress) -> str | None:
    """Why ``address`` is not a public unicast address (loopback, private, link-local, multicast,
    unspecified, reserved, shared; IPv6 carrying such an IPv4 one), or None if it is one."""
    if isinstance(address, ipaddress.IPv6Address):  # judged by the IPv4 address inside, if it carries one
        inner = _embedded_ipv4(address)
        if inner is not None:
            return non_public_reason(inner)
    if address.is_unspecified:
        return "unspecified"
    if address.is_loopback:
        return "loopback"
    if address.is_link_local:
        return "link-local"
    if address.is_multicast:
        return "multicast"
    if address.is_private or not address.is_global:
        return "private"
    if address.is_reserved:
        return "reserved"
    return None


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    if address in _NAT64 or (int(address) >> 32 == 0 and int(address) > 0xFFFF):  # NAT64, or ::a.b.c.d
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def resolve(host: str, port: int) -> list[IPAddress]:
    """The addresses ``host`` resolves to (one DNS look-up), in the resolver's order, deduplicated.

    Raises:
      OSError: the name does not resolve.
    """
    found: list[IPAddress] = []
    for family, _, _, _, sockaddr in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM):
        if family not in (socket.AF_INET, socket.AF_INET6):
            continue
        address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])  # a scope id names an interface
        if address not in found:
            found.append(address)
    if not found:
        raise OSError(f"{host!r} resolves to no IP address")
    return found


def host_allowed(host: str, domains: tuple[str, ...] | None) -> bool:
    """Whether ``host`` is one of ``domains`` or below one of them (None: every host is)."""
    if domains is None:
        return True
    host = host.lower().rstrip(".")
    return any(host == d or host.endswith("." + d) for d in (d.lower().strip(".") for d in domains))
