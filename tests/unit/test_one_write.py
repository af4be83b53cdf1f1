"""A response's head and body leave in one socket write (app/one_write.py), under uvicorn with
the protocol ``paycode serve`` runs, on both event loops the server may use: every response
stays whole and in order, a streamed head is not held behind a slow first chunk, and
``100 Continue`` is never held (the client waits for it before it sends the body)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
import uvicorn
import uvloop
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from app.http_limits import BoundedHeadProtocol
from app.one_write import HeadWithBody


class CountedTransport:
    """The real transport, with every write noted."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))
        self.transport.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transport, name)


WRITES: list[CountedTransport] = []


class CountingProtocol(BoundedHeadProtocol):
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        counted = CountedTransport(transport)
        WRITES.append(counted)
        super().connection_made(counted)  # type: ignore[arg-type]


# One per test: an asyncio.Event belongs to the loop that first waits on it.
GATE: dict[str, asyncio.Event] = {}


async def small(_request: Request) -> Response:
    return JSONResponse({"ok": True})


async def echo(request: Request) -> Response:
    return Response(await request.body(), media_type="application/octet-stream")


async def closing(_request: Request) -> Response:
    return Response(b"bye", headers={"connection": "close"})


async def stream(_request: Request) -> Response:
    async def chunks() -> AsyncIterator[bytes]:
        await GATE["first_chunk"].wait()
        yield b"first"

    return StreamingResponse(chunks(), media_type="text/plain")


APP = Starlette(
    routes=[
        Route("/small", small),
        Route("/echo", echo, methods=["POST"]),
        Route("/closing", closing),
        Route("/stream", stream),
    ]
)


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Iterator[Callable[[Any], Any]]:
    def runner(main: Any) -> Any:
        if request.param == "uvloop":
            return uvloop.run(main)
        return asyncio.run(main)

    yield runner


@contextlib.asynccontextmanager
async def serving() -> AsyncIterator[int]:
    WRITES.clear()
    GATE["first_chunk"] = asyncio.Event()
    config = uvicorn.Config(
        APP, host="127.0.0.1", port=0, http=CountingProtocol, log_level="warning", lifespan="off"
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    for _ in range(1000):
        if server.started:
            break
        await asyncio.sleep(0.01)
    assert server.started, "the server did not start within 10 s"
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield port
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


async def read_response(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    return head, await asyncio.wait_for(reader.readexactly(length), 5)


def test_each_response_is_one_write_and_stays_whole(run: Callable[[Any], Any]) -> None:
    async def main() -> None:
        async with serving() as port:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            for _ in range(3):
                writer.write(b"GET /small HTTP/1.1\r\nhost: t\r\n\r\n")
                head, body = await read_response(reader)
                assert head.startswith(b"HTTP/1.1 200 ")
                assert body == b'{"ok":true}'
            writer.close()
            (counted,) = WRITES
            assert len(counted.writes) == 3
            assert all(write.endswith(b'{"ok":true}') for write in counted.writes)

    run(main())


def test_a_closing_response_is_sent_before_the_close(run: Callable[[Any], Any]) -> None:
    async def main() -> None:
        async with serving() as port:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /closing HTTP/1.1\r\nhost: t\r\n\r\n")
            head, body = await read_response(reader)
            assert b"connection: close" in head.lower()
            assert body == b"bye"
            assert await asyncio.wait_for(reader.read(), 5) == b""
            writer.close()

    run(main())


def test_a_streamed_head_is_not_held_behind_its_first_chunk(run: Callable[[Any], Any]) -> None:
    async def main() -> None:
        async with serving() as port:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /stream HTTP/1.1\r\nhost: t\r\n\r\n")
            # The first chunk waits for this test, which waits for the head.
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert head.startswith(b"HTTP/1.1 200 ")
            GATE["first_chunk"].set()
            rest = await asyncio.wait_for(reader.readuntil(b"0\r\n\r\n"), 5)
            assert b"first" in rest
            writer.close()

    run(main())


def test_100_continue_goes_at_once(run: Callable[[Any], Any]) -> None:
    async def main() -> None:
        async with serving() as port:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(
                b"POST /echo HTTP/1.1\r\nhost: t\r\ncontent-length: 5\r\n"
                b"expect: 100-continue\r\n\r\n"
            )
            interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert interim.startswith(b"HTTP/1.1 100 ")
            writer.write(b"hello")
            head, body = await read_response(reader)
            assert head.startswith(b"HTTP/1.1 200 ")
            assert body == b"hello"
            writer.close()

    run(main())


def test_a_held_head_goes_on_the_next_turn_without_a_body() -> None:
    async def main() -> None:
        sent: list[bytes] = []

        class Sink:
            def write(self, data: bytes) -> None:
                sent.append(data)

        transport = HeadWithBody(Sink(), asyncio.get_running_loop())  # type: ignore[arg-type]
        transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
        assert sent == []
        await asyncio.sleep(0)
        assert sent == [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n"]
        transport.write(b"ok")
        assert sent[-1] == b"ok"

    asyncio.run(main())
