"""The benchmark's lean WebSocket client against the ``websockets`` library's server: the
opening handshake with its subprotocol, messages of every length encoding and fragmented ones,
masked client frames, pong for ping, the closing handshake in both directions."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection, serve

from loadtests import ws_wire

SUBPROTOCOL = "paycode.v1.json"
# Each length encoding of RFC 6455: 7-bit, 16-bit, 64-bit.
SIZES = [0, 1, 125, 126, 65_535, 65_536, 300_000]


def run(scenario: Any) -> Any:
    return asyncio.run(asyncio.wait_for(scenario(), 30))


async def echo_server(handler: Any) -> Any:
    return await serve(handler, "127.0.0.1", 0, subprotocols=[SUBPROTOCOL], max_size=None)  # type: ignore[list-item]


def url_of(server: Any) -> str:
    port = server.sockets[0].getsockname()[1]
    return f"ws://127.0.0.1:{port}/api/v1/ws"


def test_messages_of_every_length_and_fragmented_ones_arrive_whole() -> None:
    async def scenario() -> list[str | bytes]:
        async def handler(connection: ServerConnection) -> None:
            assert await connection.recv() == "hello é"
            assert await connection.recv() == "y" * 70_000
            for size in SIZES:
                await connection.send("x" * size)
            await connection.send(b"\x00\xff" * 3)
            await connection.send(["frag", "mented ", "ü"])
            await connection.wait_closed()

        got: list[str | bytes] = []
        all_in = asyncio.Event()

        def on_message(message: str | bytes) -> None:
            got.append(message)
            if len(got) == len(SIZES) + 2:
                all_in.set()

        async with await echo_server(handler) as server:
            socket = await ws_wire.connect(url_of(server), SUBPROTOCOL, on_message)
            socket.send("hello é")
            socket.send("y" * 70_000)
            await all_in.wait()
            await socket.close()
        return got

    got = run(scenario)
    assert got == [*("x" * size for size in SIZES), b"\x00\xff" * 3, "fragmented ü"]


def test_a_ping_is_answered_and_a_close_from_the_server_ends_the_socket() -> None:
    answered: list[bool] = []

    async def scenario() -> None:
        async def handler(connection: ServerConnection) -> None:
            pong = await connection.ping(b"are you there")
            await asyncio.wait_for(pong, 5)
            answered.append(True)
            await connection.close(1001, "going away")

        async with await echo_server(handler) as server:
            socket = await ws_wire.connect(url_of(server), SUBPROTOCOL, lambda _: None)
            with pytest.raises(ConnectionError, match="1001"):
                await socket.closed

    run(scenario)
    assert answered == [True]


def test_the_client_closes_with_the_closing_handshake() -> None:
    async def scenario() -> int | None:
        codes: list[int | None] = []
        seen = asyncio.Event()

        async def handler(connection: ServerConnection) -> None:
            await connection.wait_closed()
            codes.append(connection.close_code)
            seen.set()

        async with await echo_server(handler) as server:
            socket = await ws_wire.connect(url_of(server), SUBPROTOCOL, lambda _: None)
            await socket.close()
            await seen.wait()
        return codes[0]

    assert run(scenario) == 1000


def test_a_server_without_the_subprotocol_is_refused() -> None:
    async def scenario() -> None:
        async def handler(connection: ServerConnection) -> None:
            await connection.wait_closed()

        async with await serve(handler, "127.0.0.1", 0) as server:
            with pytest.raises(ws_wire.HandshakeError, match="subprotocol"):
                await ws_wire.connect(url_of(server), SUBPROTOCOL, lambda _: None)

    run(scenario)
