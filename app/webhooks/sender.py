"""One delivery attempt over HTTP/1.1: a POST whose connection goes to the checked address,
a response read to at most 64 KiB, redirects never followed, 10 s for the whole attempt.

The protocol is h11's (the HTTP/1.1 state machine uvicorn itself runs on); what is ours is
only the part no general client lets us own: opening the socket. Each new connection resolves
the name once, checks every address (spec §11) and connects to an address it checked, while
TLS (SNI, certificate) and the Host header carry the name. Connections are kept alive per
origin (scheme, name, port): with a POS that answers every payment, a TLS handshake per
delivery would cost more than the delivery. A general client's pool cost several times the
rest of a delivery in the benchmark (docs/BENCHMARKS.md, "Webhooks").
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from dataclasses import dataclass, field

import h11

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
KEEPALIVE = 30.0
IDLE_PER_ORIGIN = 8
USER_AGENT = "paycode-webhooks/1"
READ_CHUNK = 16 * 1024

Origin = tuple[str, str, int]


@dataclass(frozen=True, slots=True)
class Outcome:
    outcome: str
    status_code: int | None = None
    error: str | None = None
    seconds: float = 0.0

    @property
    def succeeded(self) -> bool:
        return self.outcome == OK


@dataclass(eq=False)
class _Connection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    protocol: h11.Connection = field(default_factory=lambda: h11.Connection(h11.CLIENT))
    idle_since: float = 0.0

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()

    def reusable(self, now: float) -> bool:
        return (
            now - self.idle_since < KEEPALIVE
            and not self.writer.is_closing()
            and not self.reader.at_eof()
        )


class _NoAnswer(Exception):
    """The connection ended before any byte of an answer: on a kept-alive connection, the
    receiver had closed it meanwhile, and the request is sent again on a new one."""


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
        self.resolver = resolver
        self.timeout = timeout
        self.idle_per_origin = min(IDLE_PER_ORIGIN, max(1, max_connections))
        self._idle: dict[Origin, list[_Connection]] = {}
        self._ssl: ssl.SSLContext | None = None
        self._pruned = time.monotonic()

    async def close(self) -> None:
        for connections in self._idle.values():
            for connection in connections:
                connection.close()
        self._idle.clear()

    async def post(self, url: str, headers: dict[str, str], body: bytes) -> Outcome:
        started = time.monotonic()
        try:
            async with asyncio.timeout(self.timeout):
                outcome = await self._post(url, headers, body)
        except TimeoutError:
            outcome = Outcome(TIMEOUT, error=f"no answer within {self.timeout:g} s")
        except RefusedAddress as exc:
            outcome = Outcome(REFUSED_ADDRESS, error=str(exc))
        except (OSError, h11.ProtocolError, _NoAnswer) as exc:
            outcome = Outcome(CONNECTION_ERROR, error=_describe(exc))
        return Outcome(
            outcome.outcome, outcome.status_code, outcome.error, time.monotonic() - started
        )

    async def _post(self, url: str, headers: dict[str, str], body: bytes) -> Outcome:
        parts = parse_url(url, allow_private=self.allow_private)
        scheme = parts.scheme.lower()
        host = parts.hostname or ""
        port = default_port(parts)
        origin = (scheme, host, port)
        authority = f"[{host}]" if ":" in host else host
        if port != (443 if scheme == "https" else 80):
            authority = f"{authority}:{port}"
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        request = h11.Request(
            method="POST",
            target=target,
            headers=[
                ("Host", authority),
                ("User-Agent", USER_AGENT),
                ("Content-Length", str(len(body))),
                *headers.items(),
            ],
        )
        reused = self._take(origin)
        if reused is not None:
            try:
                return await self._exchange(reused, origin, request, body)
            except (_NoAnswer, ConnectionError):
                pass
        connection = await self._connect(scheme, host, port)
        return await self._exchange(connection, origin, request, body)

    def _take(self, origin: Origin) -> _Connection | None:
        now = time.monotonic()
        if now - self._pruned > KEEPALIVE / 3:
            self._prune(now)
        idle = self._idle.get(origin)
        while idle:
            connection = idle.pop()
            if connection.reusable(now):
                return connection
            connection.close()
        return None

    def _prune(self, now: float) -> None:
        self._pruned = now
        for origin in list(self._idle):
            keep = []
            for connection in self._idle[origin]:
                if connection.reusable(now):
                    keep.append(connection)
                else:
                    connection.close()
            if keep:
                self._idle[origin] = keep
            else:
                del self._idle[origin]

    def _give_back(self, origin: Origin, connection: _Connection) -> None:
        idle = self._idle.setdefault(origin, [])
        if len(idle) >= self.idle_per_origin:
            connection.close()
            return
        connection.idle_since = time.monotonic()
        idle.append(connection)

    async def _connect(self, scheme: str, host: str, port: int) -> _Connection:
        addresses = await checked_addresses(
            host, port, allow_private=self.allow_private, resolver=self.resolver
        )
        tls = self._tls() if scheme == "https" else None
        failure: OSError | None = None
        for address in addresses:
            try:
                reader, writer = await asyncio.open_connection(
                    address, port, ssl=tls, server_hostname=host if tls else None
                )
            except OSError as exc:
                failure = exc
                continue
            return _Connection(reader, writer)
        assert failure is not None
        raise failure

    def _tls(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = ssl.create_default_context()
        return self._ssl

    async def _exchange(
        self, connection: _Connection, origin: Origin, request: h11.Request, body: bytes
    ) -> Outcome:
        protocol = connection.protocol
        try:
            out = protocol.send(request) or b""
            out += protocol.send(h11.Data(data=body)) or b""
            out += protocol.send(h11.EndOfMessage()) or b""
            connection.writer.write(out)
            await connection.writer.drain()
            status, complete = await self._read(connection)
        except BaseException:
            connection.close()
            raise
        if complete and protocol.our_state is h11.DONE and protocol.their_state is h11.DONE:
            protocol.start_next_cycle()
            self._give_back(origin, connection)
        else:
            connection.close()
        if 200 <= status < 300:
            return Outcome(OK, status)
        if 300 <= status < 400:
            return Outcome(REDIRECT, status, f"HTTP {status} redirect, not followed")
        return Outcome(HTTP_ERROR, status, f"HTTP {status}")

    async def _read(self, connection: _Connection) -> tuple[int, bool]:
        """The answer's status, and whether it was read to its end (False when it passed
        64 KiB: the rest is dropped with the connection)."""
        protocol = connection.protocol
        status: int | None = None
        read = 0
        while True:
            event = protocol.next_event()
            if event is h11.NEED_DATA:
                chunk = await connection.reader.read(READ_CHUNK)
                if not chunk and status is None and protocol.their_state is h11.SEND_RESPONSE:
                    raise _NoAnswer("the connection closed before an answer")
                protocol.receive_data(chunk)
                continue
            if isinstance(event, h11.InformationalResponse):
                continue
            if isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                read += len(event.data)
                if read >= MAX_RESPONSE:
                    assert status is not None
                    return status, False
            elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                if status is None:
                    raise _NoAnswer("the connection closed before an answer")
                return status, isinstance(event, h11.EndOfMessage)


def _describe(exc: BaseException) -> str:
    text = str(exc) or exc.__class__.__name__
    return f"{exc.__class__.__name__}: {text}"[:200]
