"""One delivery attempt over HTTP/1.1: a POST whose connection goes to the checked address,
a response read to at most 64 KiB, redirects never followed, 10 s for the whole attempt.

What is ours is the part no general client lets us own: opening the socket. Each new
connection resolves the name once, checks every address (spec §11) and connects to an address
it checked, while TLS (SNI, certificate) and the Host header carry the name. Connections are
kept alive per origin (scheme, name, port) up to the process's attempts in flight, so a
receiver that answers every payment costs no handshake per delivery.

Every payment owes deliveries, so an attempt is priced like the payment's own work: on a
kept-alive connection it is one write of a request built from bytes cached per URL and the
answer parsed by httptools (the C parser uvicorn runs on) in the protocol's callbacks, with no
task and no stream; only opening a connection runs as a task. A general client's pool, then h11
with asyncio streams, cost several times that (docs/BENCHMARKS.md, "Webhooks").
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import cast

import httptools

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
USER_AGENT = "paycode-webhooks/1"

Origin = tuple[str, str, int]
Landed = Callable[["Outcome"], None]


@dataclass(frozen=True, slots=True)
class Outcome:
    outcome: str
    status_code: int | None = None
    error: str | None = None
    seconds: float = 0.0

    @property
    def succeeded(self) -> bool:
        return self.outcome == OK


def _answer(status: int) -> Outcome:
    if 200 <= status < 300:
        return Outcome(OK, status)
    if 300 <= status < 400:
        return Outcome(REDIRECT, status, f"HTTP {status} redirect, not followed")
    return Outcome(HTTP_ERROR, status, f"HTTP {status}")


@dataclass(frozen=True, slots=True)
class _Target:
    """What a URL's attempts share, worked out once: where to connect and the request's head."""

    origin: Origin
    head: bytes


def _target(url: str, *, allow_private: bool) -> _Target:
    parts = parse_url(url, allow_private=allow_private)
    scheme = parts.scheme.lower()
    host = parts.hostname or ""
    port = default_port(parts)
    authority = f"[{host}]" if ":" in host else host
    if port != (443 if scheme == "https" else 80):
        authority = f"{authority}:{port}"
    # parse_url admits only ASCII without spaces or controls: safe in a request line.
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    head = f"POST {target} HTTP/1.1\r\nhost: {authority}\r\nuser-agent: {USER_AGENT}\r\n"
    return _Target((scheme, host, port), head.encode("ascii"))


def _describe(exc: BaseException) -> str:
    text = str(exc) or exc.__class__.__name__
    return f"{exc.__class__.__name__}: {text}"[:200]


class _Exchange:
    """One attempt from its request to its outcome, whichever of the answer, the connection's
    end, the timeout or a refusal comes first; the outcome is handed on exactly once."""

    __slots__ = (
        "connection",
        "data",
        "deadline",
        "landed",
        "opening",
        "retried",
        "sender",
        "started",
        "target",
    )

    def __init__(
        self, sender: Sender, target: _Target, data: bytes, landed: Landed, started: float
    ) -> None:
        self.sender = sender
        self.target = target
        self.data = data
        self.landed: Landed | None = landed
        self.started = started
        self.deadline = 0.0
        self.opening: asyncio.Task[None] | None = None
        self.connection: _Connection | None = None
        self.retried = False

    def end(self, outcome: Outcome) -> None:
        landed, self.landed = self.landed, None
        if landed is None:
            return
        # It waits in the sender's deadlines until its turn comes: only its request goes now.
        self.data = b""
        self.sender._exchanges.discard(self)
        landed(
            Outcome(
                outcome.outcome,
                outcome.status_code,
                outcome.error,
                time.monotonic() - self.started,
            )
        )


class _Connection(asyncio.Protocol):
    """A kept-alive HTTP/1.1 connection carrying one exchange at a time."""

    def __init__(self, sender: Sender, origin: Origin) -> None:
        self.sender = sender
        self.origin = origin
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.exchange: _Exchange | None = None
        self.status: int | None = None
        self.answered = False
        self.read = 0
        self.closed = False
        self.idle_since = 0.0

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self.exchange is None:
            # Nothing was asked: a receiver talking out of turn gets no second request here.
            self.close()
            return
        self.answered = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(Outcome(CONNECTION_ERROR, error=_describe(exc)))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.sender._forget(self)
        exchange, self.exchange = self.exchange, None
        if exchange is None:
            return
        if self.status is not None:
            # The status line and headers arrived: that is the receiver's answer, whether its
            # body ran to the connection's end or was cut short.
            exchange.end(_answer(self.status))
        elif not self.answered:
            self.sender._no_answer(exchange)
        else:
            error = _describe(exc) if exc else "the connection closed mid-answer"
            exchange.end(Outcome(CONNECTION_ERROR, error=error))

    # httptools callbacks

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if status >= 200:
            self.status = status

    def on_body(self, body: bytes) -> None:
        self.read += len(body)
        if self.read >= MAX_RESPONSE:
            # Enough of it: the rest goes with the connection.
            self._done(reusable=False)

    def on_message_complete(self) -> None:
        if self.status is None:
            return  # an informational (1xx) answer: the real one follows
        self._done(reusable=self.parser.should_keep_alive())

    # ours

    def send(self, exchange: _Exchange) -> None:
        assert self.transport is not None
        self.exchange = exchange
        self.status = None
        self.answered = False
        self.read = 0
        self.transport.write(exchange.data)

    def usable(self, now: float) -> bool:
        return (
            not self.closed
            and self.transport is not None
            and not self.transport.is_closing()
            and now - self.idle_since < KEEPALIVE
        )

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def _done(self, *, reusable: bool) -> None:
        exchange, self.exchange = self.exchange, None
        if exchange is None:
            return
        exchange.connection = None
        status = self.status
        assert status is not None
        if reusable and not self.closed:
            self.sender._give_back(self)
        else:
            self.close()
        exchange.end(_answer(status))

    def _fail(self, outcome: Outcome) -> None:
        exchange, self.exchange = self.exchange, None
        self.close()
        if exchange is not None:
            exchange.end(outcome)


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
        # As many idle connections per origin as attempts may run at once: every endpoint of a
        # shop's POS is usually one origin, and a smaller pool reconnects under load.
        self.idle_per_origin = max(1, max_connections)
        self._idle: dict[Origin, list[_Connection]] = {}
        self._targets: dict[str, _Target] = {}
        self._exchanges: set[_Exchange] = set()
        # Every attempt has the same timeout, so deadlines come in the order attempts start:
        # one timer for the earliest, not one per attempt (a timer's heap push and cancel
        # were a tenth of the samples of the webhook code on the event loop).
        self._deadlines: deque[_Exchange] = deque()
        self._expiry: asyncio.TimerHandle | None = None
        self._ssl: ssl.SSLContext | None = None
        self._pruned = time.monotonic()

    def send(
        self, url: str, headers: Iterable[tuple[str, str]], body: bytes, landed: Landed
    ) -> None:
        """Start one attempt; ``landed(outcome)`` is called once, on the event loop, when it
        ends (never if the sender is closed first)."""
        started = time.monotonic()
        try:
            target = self._targets.get(url) or self._remember(url)
        except RefusedAddress as exc:
            landed(Outcome(REFUSED_ADDRESS, error=str(exc)))
            return
        fields = "".join(f"{name}: {value}\r\n" for name, value in headers)
        data = b"".join(
            (
                target.head,
                f"content-length: {len(body)}\r\n{fields}\r\n".encode("ascii"),
                body,
            )
        )
        exchange = _Exchange(self, target, data, landed, started)
        self._exchanges.add(exchange)
        self._watch(exchange)
        connection = self._take(target.origin, started)
        if connection is not None:
            exchange.connection = connection
            connection.send(exchange)
        else:
            # A new connection that ends before answering is not retried: only a kept-alive
            # one may have been closed by the receiver between two attempts.
            exchange.retried = True
            self._open(exchange)

    async def post(self, url: str, headers: dict[str, str], body: bytes) -> Outcome:
        """One attempt, awaited."""
        answer: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()

        def landed(outcome: Outcome) -> None:
            if not answer.done():
                answer.set_result(outcome)

        self.send(url, headers.items(), body, landed)
        return await answer

    async def close(self) -> None:
        """Drop every connection and every attempt in flight; their outcomes are not told."""
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        self._deadlines.clear()
        for exchange in list(self._exchanges):
            exchange.landed = None
            if exchange.opening is not None:
                exchange.opening.cancel()
            if exchange.connection is not None:
                exchange.connection.close()
        self._exchanges.clear()
        for connections in list(self._idle.values()):
            for connection in connections:
                connection.close()
        self._idle.clear()
        # Let the cancelled openings and the aborted transports run their last callbacks.
        await asyncio.sleep(0)

    def _remember(self, url: str) -> _Target:
        target = _target(url, allow_private=self.allow_private)
        if len(self._targets) >= 4096:
            self._targets.clear()
        self._targets[url] = target
        return target

    def _watch(self, exchange: _Exchange) -> None:
        loop = asyncio.get_running_loop()
        exchange.deadline = loop.time() + self.timeout
        deadlines = self._deadlines
        while deadlines and deadlines[0].landed is None:
            deadlines.popleft()
        deadlines.append(exchange)
        if self._expiry is None:
            self._expiry = loop.call_at(exchange.deadline, self._expire)

    def _expire(self) -> None:
        """The earliest deadline has come: every attempt still running past its own ends."""
        self._expiry = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        deadlines = self._deadlines
        while deadlines:
            exchange = deadlines[0]
            if exchange.landed is not None and exchange.deadline > now:
                self._expiry = loop.call_at(exchange.deadline, self._expire)
                return
            deadlines.popleft()
            if exchange.landed is not None:
                self._timed_out(exchange)

    def _timed_out(self, exchange: _Exchange) -> None:
        if exchange.opening is not None:
            exchange.opening.cancel()
        if exchange.connection is not None:
            exchange.connection.exchange = None
            exchange.connection.close()
        exchange.end(Outcome(TIMEOUT, error=f"no answer within {self.timeout:g} s"))

    def _take(self, origin: Origin, now: float) -> _Connection | None:
        if now - self._pruned > KEEPALIVE / 3:
            self._prune(now)
        idle = self._idle.get(origin)
        while idle:
            connection = idle.pop()
            if connection.usable(now):
                return connection
            connection.close()
        return None

    def _prune(self, now: float) -> None:
        self._pruned = now
        for origin in list(self._idle):
            keep = []
            for connection in self._idle[origin]:
                if connection.usable(now):
                    keep.append(connection)
                else:
                    connection.close()
            if keep:
                self._idle[origin] = keep
            else:
                del self._idle[origin]

    def _give_back(self, connection: _Connection) -> None:
        idle = self._idle.setdefault(connection.origin, [])
        if len(idle) >= self.idle_per_origin:
            connection.close()
            return
        connection.idle_since = time.monotonic()
        idle.append(connection)

    def _forget(self, connection: _Connection) -> None:
        """A connection that ended while idle leaves the pool."""
        idle = self._idle.get(connection.origin)
        if idle and connection in idle:
            idle.remove(connection)

    def _no_answer(self, exchange: _Exchange) -> None:
        """The connection ended before any byte of an answer: on a kept-alive connection the
        receiver had closed it meanwhile, and the request goes once more on a new one."""
        exchange.connection = None
        if exchange.retried or exchange.landed is None:
            exchange.end(Outcome(CONNECTION_ERROR, error="the connection closed before an answer"))
            return
        exchange.retried = True
        self._open(exchange)

    def _open(self, exchange: _Exchange) -> None:
        exchange.opening = asyncio.create_task(self._connect(exchange), name="webhook-connect")

    async def _connect(self, exchange: _Exchange) -> None:
        scheme, host, port = exchange.target.origin
        try:
            addresses = await checked_addresses(
                host, port, allow_private=self.allow_private, resolver=self.resolver
            )
            tls = self._tls() if scheme == "https" else None
            loop = asyncio.get_running_loop()
            failure: OSError | None = None
            for address in addresses:
                connection = _Connection(self, exchange.target.origin)
                try:
                    await loop.create_connection(
                        lambda c=connection: c,  # type: ignore[misc]
                        address,
                        port,
                        ssl=tls,
                        server_hostname=host if tls else None,
                    )
                except OSError as exc:
                    failure = exc
                    continue
                break
            else:
                assert failure is not None
                raise failure
        except RefusedAddress as exc:
            exchange.end(Outcome(REFUSED_ADDRESS, error=str(exc)))
            return
        except OSError as exc:
            exchange.end(Outcome(CONNECTION_ERROR, error=_describe(exc)))
            return
        finally:
            exchange.opening = None
        if exchange.landed is None:
            # Timed out or closed while connecting: the connection is of no use to anyone.
            connection.close()
            return
        exchange.connection = connection
        connection.send(exchange)

    def _tls(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = ssl.create_default_context()
        return self._ssl
