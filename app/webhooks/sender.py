"""One delivery attempt over HTTP: a POST whose connection goes to the checked address, a
response read to at most 64 KiB, redirects never followed, 10 s for the whole attempt.

httpcore (the transport under httpx) is used directly because it lets the connection step be
replaced: its pool keeps connections per origin (scheme, host name, port), so TLS and the Host
header carry the name, while :class:`PinnedBackend` resolves the name, checks every address
and opens the socket to an address it checked.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import httpcore

from app.webhooks.addresses import (
    RefusedAddress,
    Resolver,
    checked_addresses,
    default_port,
    parse_url,
)
from models.webhooks import CONNECTION_ERROR, HTTP_ERROR, OK, REDIRECT, REFUSED_ADDRESS, TIMEOUT

MAX_RESPONSE = 64 * 1024
ATTEMPT_TIMEOUT = 10.0
USER_AGENT = "paycode-webhooks/1"


@dataclass(frozen=True, slots=True)
class Outcome:
    outcome: str
    status_code: int | None = None
    error: str | None = None
    seconds: float = 0.0

    @property
    def succeeded(self) -> bool:
        return self.outcome == OK


class PinnedBackend(httpcore.AsyncNetworkBackend):
    """Opens TCP connections only to addresses that pass the check of spec §11, resolving
    each name once per connection and connecting to exactly what was checked."""

    def __init__(self, *, allow_private: bool, resolver: Resolver) -> None:
        self.allow_private = allow_private
        self.resolver = resolver
        self.inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        addresses = await checked_addresses(
            host, port, allow_private=self.allow_private, resolver=self.resolver
        )
        failure: Exception | None = None
        for address in addresses:
            try:
                return await self.inner.connect_tcp(
                    address,
                    port,
                    timeout=timeout,
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
        assert failure is not None
        raise failure

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("webhooks are sent over TCP only")

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


class Sender:
    def __init__(
        self,
        *,
        allow_private: bool,
        resolver: Resolver,
        max_connections: int,
        timeout: float = ATTEMPT_TIMEOUT,
    ) -> None:
        self.allow_private = allow_private
        self.timeout = timeout
        self.pool = httpcore.AsyncConnectionPool(
            max_connections=max_connections,
            keepalive_expiry=30.0,
            retries=0,
            network_backend=PinnedBackend(allow_private=allow_private, resolver=resolver),
        )

    async def close(self) -> None:
        await self.pool.aclose()

    async def post(self, url: str, headers: dict[str, str], body: bytes) -> Outcome:
        started = time.monotonic()
        try:
            async with asyncio.timeout(self.timeout):
                outcome = await self._post(url, headers, body)
        except TimeoutError:
            outcome = Outcome(TIMEOUT, error=f"no answer within {self.timeout:g} s")
        except RefusedAddress as exc:
            outcome = Outcome(REFUSED_ADDRESS, error=str(exc))
        except httpcore.TimeoutException as exc:
            outcome = Outcome(TIMEOUT, error=_describe(exc))
        except (httpcore.NetworkError, httpcore.ProtocolError, OSError) as exc:
            outcome = Outcome(CONNECTION_ERROR, error=_describe(exc))
        except httpcore.UnsupportedProtocol as exc:
            outcome = Outcome(CONNECTION_ERROR, error=_describe(exc))
        return Outcome(
            outcome.outcome, outcome.status_code, outcome.error, time.monotonic() - started
        )

    async def _post(self, url: str, headers: dict[str, str], body: bytes) -> Outcome:
        parts = parse_url(url, allow_private=self.allow_private)
        host = parts.hostname or ""
        port = default_port(parts)
        default = 443 if parts.scheme.lower() == "https" else 80
        authority = host if ":" not in host else f"[{host}]"
        if port != default:
            authority = f"{authority}:{port}"
        sent = [
            (b"Host", authority.encode("ascii")),
            (b"User-Agent", USER_AGENT.encode()),
            (b"Content-Length", str(len(body)).encode()),
            *((k.encode("ascii"), v.encode("ascii")) for k, v in headers.items()),
        ]
        limits = {"connect": self.timeout, "read": self.timeout, "write": self.timeout}
        async with self.pool.stream(
            "POST",
            url,
            headers=sent,
            content=body,
            extensions={"timeout": {**limits, "pool": self.timeout}},
        ) as response:
            read = 0
            # At most 64 KiB of what the receiver says; the rest is dropped with the connection.
            async for chunk in response.aiter_stream():
                read += len(chunk)
                if read >= MAX_RESPONSE:
                    break
            status = response.status
        if 200 <= status < 300:
            return Outcome(OK, status)
        if 300 <= status < 400:
            return Outcome(REDIRECT, status, f"HTTP {status} redirect, not followed")
        return Outcome(HTTP_ERROR, status, f"HTTP {status}")


def _describe(exc: Exception) -> str:
    text = str(exc) or exc.__class__.__name__
    return f"{exc.__class__.__name__}: {text}"[:200]
