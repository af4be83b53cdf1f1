"""The webhook sender against a real HTTP/1.1 peer on 127.0.0.1, on both event loops the
server may run (asyncio's and uvloop's): kept-alive connections reused, a connection the
receiver closed between attempts replaced, and every way an answer can end mapped to its
outcome, within the attempt's time."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field

import pytest
import uvloop

from app.webhooks.addresses import system_resolver
from app.webhooks.sender import MAX_RESPONSE, Sender
from models.webhooks import CONNECTION_ERROR, HTTP_ERROR, OK, REDIRECT, TIMEOUT

OK_ANSWER = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter, "Peer"], Awaitable[None]]


@dataclass
class Peer:
    """A receiver whose every connection runs ``script``; it notes what it was sent."""

    script: Script
    connections: int = 0
    requests: list[bytes] = field(default_factory=list)
    port: int = 0

    async def serve(self) -> asyncio.Server:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections += 1
            with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
                await self.script(reader, writer, self)
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        return server

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/shop?x=1"


async def read_request(reader: asyncio.StreamReader, peer: Peer) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    request = head + await reader.readexactly(length)
    peer.requests.append(request)
    return request


async def keep_answering(reader: asyncio.StreamReader, w: asyncio.StreamWriter, p: Peer) -> None:
    while True:
        await read_request(reader, p)
        w.write(OK_ANSWER)
        await w.drain()


async def answer_once_then_drop(
    reader: asyncio.StreamReader, w: asyncio.StreamWriter, p: Peer
) -> None:
    await read_request(reader, p)
    w.write(OK_ANSWER)
    await w.drain()
    # A receiver that keeps nothing alive without saying so: it reads the next request on
    # this connection and closes it unanswered.
    await read_request(reader, p)


def answering(answer: bytes) -> Script:
    async def script(reader: asyncio.StreamReader, w: asyncio.StreamWriter, p: Peer) -> None:
        await read_request(reader, p)
        w.write(answer)
        await w.drain()
        await asyncio.sleep(0.2)

    return script


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Iterator[Callable[[Awaitable[None]], None]]:
    def runner(coroutine: Awaitable[None]) -> None:
        if request.param == "uvloop":
            uvloop.run(coroutine)  # type: ignore[arg-type]
        else:
            asyncio.run(coroutine)  # type: ignore[arg-type]

    yield runner


def sender(timeout: float = 5.0) -> Sender:
    return Sender(allow_private=True, resolver=system_resolver, max_connections=4, timeout=timeout)


def test_attempts_reuse_one_kept_alive_connection(run: Callable[[Awaitable[None]], None]) -> None:
    """Five attempts to one origin go over one connection, each a complete request: the
    request line, Host, Content-Length, the given headers and the body, byte for byte."""

    async def main() -> None:
        peer = Peer(keep_answering)
        server = await peer.serve()
        http = sender()
        try:
            for n in range(5):
                body = b'{"n":%d}' % n
                outcome = await http.post(peer.url, {"webhook-id": f"msg_{n}"}, body)
                assert outcome.outcome == OK and outcome.status_code == 200
        finally:
            await http.close()
            server.close()
        assert peer.connections == 1
        first = peer.requests[0]
        assert first.startswith(b"POST /hooks/shop?x=1 HTTP/1.1\r\n")
        assert f"host: 127.0.0.1:{peer.port}\r\n".encode() in first
        assert b"content-length: 7\r\n" in first and b"webhook-id: msg_0\r\n" in first
        assert first.endswith(b'\r\n\r\n{"n":0}')

    run(main())


def test_a_connection_the_receiver_closed_is_replaced(
    run: Callable[[Awaitable[None]], None],
) -> None:
    """The receiver answers one request per connection and closes the next unanswered: each
    later attempt, sent on the kept-alive connection, ends before any answer and goes once
    more on a new connection, which answers it."""

    async def main() -> None:
        peer = Peer(answer_once_then_drop)
        server = await peer.serve()
        http = sender()
        try:
            for _ in range(3):
                outcome = await http.post(peer.url, {}, b"{}")
                assert outcome.outcome == OK
        finally:
            await http.close()
            server.close()
        # 1 on the first connection, then 2 sends (dropped, then answered) per later attempt.
        assert len(peer.requests) == 5 and peer.connections == 3

    run(main())


@pytest.mark.parametrize(
    ("answer", "outcome", "status"),
    [
        (b"HTTP/1.1 204 No Content\r\n\r\n", OK, 204),
        (b"HTTP/1.1 100 Continue\r\n\r\n" + OK_ANSWER, OK, 200),
        (
            b"HTTP/1.1 302 Found\r\nlocation: http://10.0.0.1/\r\ncontent-length: 0\r\n\r\n",
            REDIRECT,
            302,
        ),
        (b"HTTP/1.1 500 Oops\r\ncontent-length: 0\r\n\r\n", HTTP_ERROR, 500),
        # A body that runs to the connection's end: the status is the answer.
        (b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nthe rest", OK, 200),
        (b"this is not HTTP\r\n\r\n", CONNECTION_ERROR, None),
    ],
)
def test_each_kind_of_answer_has_its_outcome(
    run: Callable[[Awaitable[None]], None], answer: bytes, outcome: str, status: int | None
) -> None:
    """Success, an informational answer before the real one, a redirect (never followed),
    an error status, a close-delimited body and bytes that are not HTTP."""

    async def main() -> None:
        peer = Peer(answering(answer))
        server = await peer.serve()
        http = sender()
        try:
            got = await http.post(peer.url, {}, b"{}")
        finally:
            await http.close()
            server.close()
        assert (got.outcome, got.status_code) == (outcome, status)
        assert len(peer.requests) == 1

    run(main())


def test_a_long_answer_is_read_to_64_kib_only(run: Callable[[Awaitable[None]], None]) -> None:
    """An answer announcing 10 MiB: the attempt ends with its status once 64 KiB are read,
    and the connection is not kept (the rest of the body would still be coming)."""

    async def endless(reader: asyncio.StreamReader, w: asyncio.StreamWriter, p: Peer) -> None:
        await read_request(reader, p)
        w.write(b"HTTP/1.1 200 OK\r\ncontent-length: 10485760\r\n\r\n")
        chunk = b"x" * 65536
        for _ in range(160):
            w.write(chunk)
            await w.drain()

    async def main() -> None:
        peer = Peer(endless)
        server = await peer.serve()
        http = sender()
        try:
            first = await http.post(peer.url, {}, b"{}")
            second = await http.post(peer.url, {}, b"{}")
        finally:
            await http.close()
            server.close()
        assert first.outcome == OK and second.outcome == OK
        assert peer.connections == 2
        assert MAX_RESPONSE == 64 * 1024

    run(main())


def test_no_answer_is_a_timeout_within_the_attempts_time(
    run: Callable[[Awaitable[None]], None],
) -> None:
    """A receiver that reads the request and never answers: the attempt ends as a timeout
    after the sender's limit, not later, and the silent connection is not reused."""

    async def silent(reader: asyncio.StreamReader, w: asyncio.StreamWriter, p: Peer) -> None:
        await read_request(reader, p)
        await asyncio.sleep(30)

    async def main() -> None:
        peer = Peer(silent)
        server = await peer.serve()
        http = sender(timeout=0.5)
        try:
            loop = asyncio.get_running_loop()
            began = loop.time()
            got = await http.post(peer.url, {}, b"{}")
            took = loop.time() - began
        finally:
            await http.close()
            server.close()
        assert got.outcome == TIMEOUT and 0.45 <= took < 2.0
        assert http._idle == {}

    run(main())


def test_each_attempt_times_out_at_its_own_deadline(
    run: Callable[[Awaitable[None]], None],
) -> None:
    """Attempts started at different moments, the first and the last never answered: each
    silent one ends at its own start plus the timeout, and the one answered in between
    succeeds, though the attempts share one timer."""

    async def only_fast(reader: asyncio.StreamReader, w: asyncio.StreamWriter, p: Peer) -> None:
        while True:
            request = await read_request(reader, p)
            if request.endswith(b"fast"):
                w.write(OK_ANSWER)
                await w.drain()

    async def main() -> None:
        peer = Peer(only_fast)
        server = await peer.serve()
        http = sender(timeout=0.6)
        loop = asyncio.get_running_loop()
        began = loop.time()

        async def attempt(after: float, body: bytes) -> tuple[str, float]:
            await asyncio.sleep(after)
            started = loop.time()
            got = await http.post(peer.url, {}, body)
            return got.outcome, loop.time() - started

        try:
            first, fast, last = await asyncio.gather(
                attempt(0.0, b"slow"), attempt(0.2, b"fast"), attempt(0.3, b"slow")
            )
            finished = loop.time() - began
        finally:
            await http.close()
            server.close()
        assert first[0] == TIMEOUT and 0.55 <= first[1] < 0.85
        assert fast[0] == OK and fast[1] < 0.3
        assert last[0] == TIMEOUT and 0.55 <= last[1] < 0.85
        assert 0.85 <= finished < 1.3

    run(main())


def test_a_refused_connection_is_a_connection_error(
    run: Callable[[Awaitable[None]], None],
) -> None:
    """Nothing listens on the port: the attempt ends at once as a connection error."""

    async def main() -> None:
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        server.close()
        await server.wait_closed()
        http = sender()
        try:
            got = await http.post(f"http://127.0.0.1:{port}/x", {}, b"{}")
        finally:
            await http.close()
        assert got.outcome == CONNECTION_ERROR and got.error

    run(main())
