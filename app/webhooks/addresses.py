"""Where a webhook may be sent: the URL rules of spec §11 and the address check behind them.

The check runs twice: when an endpoint is saved, and when each attempt opens its connection.
DNS can change between the two (or between two lookups of one attempt: DNS rebinding), so the
connection is made to the very address that was checked, never to a name looked up again.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable
from urllib.parse import SplitResult, urlsplit

from models.webhooks import MAX_URL

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# host, port → the addresses the name resolves to, in the resolver's order.
Resolver = Callable[[str, int], Awaitable[list[str]]]

RESOLVE_TIMEOUT = 3.0


class RefusedAddress(Exception):
    """The URL or the address its host resolves to may not receive webhooks."""


async def system_resolver(host: str, port: int) -> list[str]:
    loop = asyncio.get_running_loop()
    infos = await asyncio.wait_for(
        loop.getaddrinfo(host, port, type=socket.SOCK_STREAM), RESOLVE_TIMEOUT
    )
    seen: list[str] = []
    for _family, _type, _proto, _name, sockaddr in infos:
        address = str(sockaddr[0]).split("%", 1)[0]
        if address not in seen:
            seen.append(address)
    return seen


def is_public(address: IPAddress) -> bool:
    """True only for globally routable unicast: loopback, private, link-local (the cloud
    metadata service at 169.254.169.254 among them), multicast, unspecified, reserved and
    shared (CGNAT) ranges are all refused, and so is IPv4 hidden in IPv6."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is not None:
            return is_public(embedded)
        if address.teredo is not None:
            return False
    return address.is_global and not address.is_multicast


def parse_url(url: object, *, allow_private: bool) -> SplitResult:
    """The URL's parts if its form is acceptable; RefusedAddress with the reason if not."""
    if not isinstance(url, str) or not url:
        raise RefusedAddress("url must be a non-empty string")
    if len(url) > MAX_URL:
        raise RefusedAddress(f"url must be at most {MAX_URL} characters")
    if not url.isascii() or any(c.isspace() or ord(c) < 0x20 for c in url):
        raise RefusedAddress("url must be ASCII without spaces (punycode for other names)")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise RefusedAddress("url is not a valid URL") from exc
    allowed = ("https", "http") if allow_private else ("https",)
    if parts.scheme.lower() not in allowed:
        raise RefusedAddress("url must use https://")
    if not parts.hostname:
        raise RefusedAddress("url must name a host")
    if parts.username is not None or parts.password is not None:
        # Credentials in the URL would show in every list of endpoints.
        raise RefusedAddress("url must not carry a user name or password")
    if port == 0:
        raise RefusedAddress("url port must be between 1 and 65535")
    return parts


def default_port(parts: SplitResult) -> int:
    return parts.port or (443 if parts.scheme.lower() == "https" else 80)


async def checked_addresses(
    host: str, port: int, *, allow_private: bool, resolver: Resolver
) -> list[str]:
    """The addresses of ``host`` that may be connected to, at least one; RefusedAddress when
    the name does not resolve or any of its addresses is not public (a name mixing public and
    private addresses is refused as a whole: which one a client picks is not ours to rely on)."""
    literal = _literal(host)
    if literal is not None:
        addresses = [literal]
    else:
        try:
            addresses = [ipaddress.ip_address(a) for a in await resolver(host, port)]
        except (OSError, TimeoutError, ValueError, UnicodeError) as exc:
            raise RefusedAddress("url host does not resolve") from exc
        if not addresses:
            raise RefusedAddress("url host does not resolve")
    if not allow_private:
        for address in addresses:
            if not is_public(address):
                raise RefusedAddress(
                    "url host resolves to a loopback, private, link-local, multicast or "
                    "unspecified address"
                )
    return [str(a) for a in addresses]


async def check_url(url: object, *, allow_private: bool, resolver: Resolver) -> str:
    """Save-time check of spec §11: the URL as stored, or RefusedAddress."""
    parts = parse_url(url, allow_private=allow_private)
    if not allow_private:
        await checked_addresses(
            parts.hostname or "",
            default_port(parts),
            allow_private=allow_private,
            resolver=resolver,
        )
    assert isinstance(url, str)
    return url


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        return None
