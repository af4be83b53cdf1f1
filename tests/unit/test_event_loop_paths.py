"""The event loop's share of a sale, kept short: a live frame is written to the server's own
send in the publisher's call, a payment's parties share their event's encoding, a private
memory bus is not published to, and one middleware wrapper adds both the request id and the
security headers."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.testclient import TestClient
from starlette.websockets import WebSocket

from app import observability
from app.routes import ws as ws_routes
from app.security_headers import security_headers
from realtime import protocol
from realtime.connection import Connection
from realtime.hub import Hub
from realtime.protocol import CLOSE_TRY_AGAIN, JSON, MSGPACK, EventFrame, commit_time
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


def test_the_parties_of_one_payment_share_the_encoding_of_their_event(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Equal events published one after another to different accounts (a payment's parties)
    are encoded once per format; each frame still carries its own account's seq, byte for
    byte what encoding the whole frame gives."""
    encoded: list[Any] = []
    real_encode = protocol.encode

    def counting(fmt: str, frame: dict[str, Any]) -> Any:
        encoded.append(frame)
        return real_encode(fmt, frame)

    monkeypatch.setattr(protocol, "encode", counting)

    async def main() -> tuple[list[Any], list[Any]]:
        hub = Hub("memory://")
        await hub.start()
        json_wires: list[Any] = []
        packed_wires: list[Any] = []

        async def to_json(wire: str | bytes) -> None:
            json_wires.append(wire)

        async def to_msgpack(wire: str | bytes) -> None:
            packed_wires.append(wire)

        conns = [
            Connection("payee", "d1", JSON, to_json, no_history, after=4),
            Connection("agent", "d2", JSON, to_json, no_history, after=8),
            Connection("agent", "d3", MSGPACK, to_msgpack, no_history, after=8),
        ]
        for conn in conns:
            await hub.join(conn)
            conn.start()
        await until(lambda: all(not c.syncing for c in conns))
        shared = event(1)
        await hub.publish("payee", 5, shared)
        await hub.publish("agent", 9, dict(shared))
        for conn in conns:
            conn.close(1000)
            await hub.leave(conn)
        await hub.stop()
        return json_wires, packed_wires

    json_wires, packed_wires = asyncio.run(main())
    assert len(encoded) == 2  # the event once as JSON, once as msgpack
    assert [json.loads(w) for w in json_wires] == [
        {"type": "event", "seq": 5, "event": event(1)},
        {"type": "event", "seq": 9, "event": event(1)},
    ]
    assert json_wires[0] == real_encode(JSON, {"type": "event", "seq": 5, "event": event(1)})
    assert packed_wires == [
        real_encode(MSGPACK, {"type": "event", "seq": 9, "event": event(1)}),
    ]


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


def test_one_wrapper_adds_the_request_id_and_the_security_headers() -> None:
    """Security headers the response lacks are added, one it sets itself is kept, and the
    app's own X-Request-ID is replaced by the request's, which comes last and only once."""

    async def framed(_request: Request) -> Response:
        return JSONResponse({}, headers={"X-Frame-Options": "SAMEORIGIN", "X-Request-ID": "app"})

    app = Starlette(
        routes=[Route("/framed", framed)],
        middleware=[
            Middleware(observability.ObservabilityMiddleware, extra_headers=security_headers)
        ],
    )
    with TestClient(app) as client:
        reply = client.get("/framed", headers={"X-Request-ID": "given-1"})
        fresh = client.get("/framed")
    names = [name.lower() for name, _ in reply.headers.multi_items()]
    assert reply.headers["x-frame-options"] == "SAMEORIGIN"
    assert names.count("x-frame-options") == 1
    assert reply.headers["x-content-type-options"] == "nosniff"
    assert reply.headers["referrer-policy"] == "no-referrer"
    assert "ws://testserver" in reply.headers["content-security-policy"]
    assert names.count("x-request-id") == 1 and names[-1] == "x-request-id"
    assert reply.headers["x-request-id"] == "given-1"
    assert re.fullmatch(r"[0-9a-f]{32}", fresh.headers["x-request-id"])
