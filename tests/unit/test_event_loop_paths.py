"""The event loop's share of a sale, kept short: a live frame is written to the server's own
send in the publisher's call, and a private memory bus is not published to."""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import WebSocketRoute
from starlette.testclient import TestClient
from starlette.websockets import WebSocket

from app import observability
from app.routes import ws as ws_routes
from realtime.connection import Connection
from realtime.hub import Hub
from realtime.protocol import CLOSE_TRY_AGAIN, JSON, EventFrame, commit_time
from tests.unit.test_realtime_connection import Socket, event, until


async def no_history(_account: str, _after: int, _limit: int) -> list[Any]:
    return []


def test_a_private_memory_bus_is_not_published_to_and_a_named_one_is() -> None:
    """`memory://` reaches this hub alone, so its events go to local sockets only; a named
    bus still carries every event to the other hubs on it."""

    async def main() -> tuple[list[int], int, int]:
        private, named = Hub("memory://"), Hub("memory://bus-publish-check")
        sent = {"private": 0, "named": 0}
        for label, hub in (("private", private), ("named", named)):
            await hub.start()
            publish = hub.broker.publish

            async def counting(messages: Any, label: str = label, publish: Any = publish) -> None:
                messages = list(messages)
                sent[label] += len(messages)
                await publish(messages)

            hub.broker.publish = counting  # type: ignore[method-assign]
        socket = Socket()
        conn = Connection("acct", "dev", JSON, socket.send, no_history, after=0)
        async with private.attach(conn):
            conn.start()
            await until(lambda: not conn.syncing)
            await private.publish("acct", 1, event(1))
            await named.publish("acct", 1, event(1))
            await until(lambda: sent["named"] == 1)
            await asyncio.sleep(0.02)
            conn.close(1000)
        await private.stop()
        await named.stop()
        return socket.seqs, sent["private"], sent["named"]

    assert asyncio.run(main()) == ([1], 0, 1)


def test_a_live_frame_is_written_in_the_publishers_call_and_timed_from_its_commit() -> None:
    """The write finishes inside `offer`; the push-latency hook gets the commit time read once
    from `created_at` (nothing for a time that does not read); a write that fails closes the
    connection with 1013 at once."""

    async def main() -> tuple[list[int], list[Any], int | None]:
        socket = Socket()
        pushed: list[Any] = []
        conn = Connection(
            "acct", "dev", JSON, socket.send, no_history, after=0, on_push=pushed.append
        )
        conn.start()
        await until(lambda: not conn.syncing)
        conn.offer(EventFrame(1, event(1)))
        conn.offer(EventFrame(2, {"type": "x", "created_at": "not a time", "data": {}}))
        seqs = list(socket.seqs)

        async def broken(_wire: str | bytes) -> None:
            raise ConnectionResetError

        failing = Connection("acct", "dev2", JSON, broken, no_history, after=0)
        failing.start()
        await until(lambda: not failing.syncing)
        failing.offer(EventFrame(1, event(1)))
        code = failing.close_code
        conn.close(1000)
        await conn.wait()
        await failing.wait()
        return seqs, pushed, code

    seqs, pushed, code = asyncio.run(main())
    assert seqs == [1, 2]
    assert pushed == [commit_time(event(1)["created_at"])]
    assert isinstance(pushed[0], float)
    assert code == CLOSE_TRY_AGAIN


def test_socket_frames_go_to_the_server_send_under_the_middleware() -> None:
    """ObservabilityMiddleware hands the endpoint the server's own send; the connection's
    frame writer uses it, and the frames arrive as text on the JSON subprotocol."""
    seen: dict[str, Any] = {}

    async def endpoint(websocket: WebSocket) -> None:
        await websocket.accept()
        seen["server_send"] = websocket.scope.get(observability.SERVER_SEND)
        write = ws_routes._sender(websocket, JSON)
        await write('{"type":"pong"}')
        await websocket.close()

    app = Starlette(
        routes=[WebSocketRoute("/ws", endpoint)],
        middleware=[Middleware(observability.ObservabilityMiddleware)],
    )
    with TestClient(app) as client, client.websocket_connect("/ws") as ws:
        assert ws.receive_text() == '{"type":"pong"}'
    assert seen["server_send"] is not None
