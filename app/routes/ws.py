"""Spec §8: the WebSocket of live confirmations, ``GET /api/v1/ws``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections.abc import Coroutine
from dataclasses import dataclass
from functools import partial
from typing import Any

from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from app.http import in_thread
from app.observability import SERVER_SEND
from app.state import AppState, state_of
from models import accounts, events
from models.db import Database
from models.errors import Unauthorized
from realtime import protocol
from realtime.connection import Connection, FetchAfter
from realtime.hub import CLOSE_TOO_MANY_SOCKETS, TooManySockets
from realtime.protocol import ProtocolError, Wire

log = logging.getLogger("paycode.ws")

HELLO_TIMEOUT = 10.0
# How long a close may wait for a socket that stopped reading before the task gives up.
CLOSE_WAIT = 10.0


@dataclass(frozen=True, slots=True)
class Greeting:
    account_id: str
    device_id: str
    account: dict[str, Any]
    last_seq: int


def _greet(db: Database, token: str, currency: str) -> Greeting:
    with db.read() as session:
        account, device = accounts.authenticate(session, token)
        view = accounts.account_view(account, currency)
        return Greeting(account.id, device.id, view, account.last_seq)


def _read_after(
    db: Database, account_id: str, after: int, limit: int
) -> list[tuple[int, dict[str, Any]]]:
    with db.read() as session:
        rows = events.list_after(session, account_id, after, limit)
        return [(row.seq, events.event_body(row)) for row in rows]


_readers: weakref.WeakKeyDictionary[Database, FetchAfter] = weakref.WeakKeyDictionary()


def outbox_reader(db: Database) -> FetchAfter:
    """The replay read of `db`, one function shared by every socket of the process."""
    reader = _readers.get(db)
    if reader is None:

        async def fetch_after(account_id: str, after: int, limit: int) -> list[tuple[int, Any]]:
            return await in_thread(_read_after, db, account_id, after, limit)

        reader = _readers[db] = fetch_after
    return reader


async def _receive(websocket: WebSocket) -> Wire:
    message = await websocket.receive()
    if message["type"] == "websocket.disconnect":
        raise WebSocketDisconnect(message.get("code", 1000))
    if message.get("text") is not None:
        return str(message["text"])
    return bytes(message.get("bytes") or b"")


async def _reply(websocket: WebSocket, fmt: str, wire: Wire) -> None:
    if fmt == protocol.MSGPACK:
        await websocket.send_bytes(wire)  # type: ignore[arg-type]
    else:
        await websocket.send_text(wire)  # type: ignore[arg-type]


def _sender(websocket: WebSocket, fmt: str) -> Any:
    """The connection's frame writer."""
    server_send = websocket.scope.get(SERVER_SEND)
    if server_send is None:
        # Not under ObservabilityMiddleware: through Starlette's WebSocket, as any endpoint.
        return partial(_reply, websocket, fmt)
    # The frames of an accepted socket go to the server's send: the message that
    # `WebSocket.send_text`/`send_bytes` would pass down, without the wrappers in between and
    # a coroutine for each. The server's send still refuses a frame after the close or the
    # client's disconnect, and the endpoint closes the socket through Starlette as before.
    if fmt == protocol.MSGPACK:

        def send_bytes(wire: Wire) -> Coroutine[Any, Any, None]:
            return server_send({"type": "websocket.send", "bytes": wire})  # type: ignore[no-any-return]

        return send_bytes

    def send_text(wire: Wire) -> Coroutine[Any, Any, None]:
        return server_send({"type": "websocket.send", "text": wire})  # type: ignore[no-any-return]

    return send_text


async def _await_hello(websocket: WebSocket, fmt: str) -> protocol.Hello:
    """Frames until the hello; pings are answered and unknown types told off meanwhile."""
    while True:
        frame = protocol.decode(fmt, await _receive(websocket))
        kind = frame["type"]
        if kind == "hello":
            return protocol.parse_hello(frame)
        if kind == "ping":
            reply = protocol.PONG
        else:
            reply = protocol.error("hello_required", "say hello first")
        await _reply(websocket, fmt, protocol.encode(fmt, reply))


async def _close(websocket: WebSocket, code: int, reason: str = "") -> None:
    # A socket that stopped reading can hold the close frame back; do not wait forever.
    with contextlib.suppress(Exception):
        await asyncio.wait_for(websocket.close(code, reason[:120]), CLOSE_WAIT)


async def _read_loop(websocket: WebSocket, conn: Connection, fmt: str) -> bool:
    """Answer the client's frames until the connection closes; True when the client went
    away. Runs in the socket's own task, which `conn.close` cancels to end the wait for a
    frame, so a welcomed socket needs no task of its own while nothing is sent."""
    task = asyncio.current_task()
    assert task is not None
    cancelling = task.cancelling()
    conn.owner = task
    try:
        while conn.close_code is None:
            # `_receive` inlined: each suspended coroutine is memory every idle socket holds.
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return True
            text = message.get("text")
            wire = str(text) if text is not None else bytes(message.get("bytes") or b"")
            try:
                frame = protocol.decode(fmt, wire)
            except ProtocolError as exc:
                conn.close(exc.close_code, exc.reason)
                return False
            kind = frame["type"]
            if kind == "ping":
                reply = protocol.PONG
            elif kind == "hello":
                reply = protocol.error("already_welcomed", "this connection already said hello")
            else:
                reply = protocol.error("unknown_type", f"unknown frame type {kind[:40]!r}")
            conn.send_control(protocol.encode(fmt, reply))
        return False
    except asyncio.CancelledError:
        # Only the cancellation `conn.close` asked for is taken back; any other goes on.
        if conn.close_code is None or task.uncancel() > cancelling:
            raise
        return False
    except Exception:
        # A disconnect, or a socket that broke under the read: nobody is left to close.
        return True
    finally:
        conn.owner = None


async def websocket_endpoint(websocket: WebSocket) -> None:
    state = state_of(websocket)
    offered = list(websocket.scope.get("subprotocols") or [])
    fmt = protocol.negotiate(offered)
    await websocket.accept(subprotocol=fmt if fmt in offered else None)
    conn = await _open(websocket, state, fmt)
    if conn is None:
        return
    # Serving stays in this frame rather than a helper's: one suspended coroutine fewer for
    # every idle socket.
    disconnected = False
    try:
        try:
            conn.start()
            disconnected = await _read_loop(websocket, conn, fmt)
        except (WebSocketDisconnect, OSError, RuntimeError):
            disconnected = True
        finally:
            conn.close(conn.close_code or protocol.CLOSE_NORMAL)
            await conn.wait()
    finally:
        await state.hub.leave(conn)
    if not disconnected:
        await _close(websocket, conn.close_code or protocol.CLOSE_NORMAL, conn.close_reason)


async def _open(websocket: WebSocket, state: AppState, fmt: str) -> Connection | None:
    """Hello, authentication and the caps: the joined connection with its welcome queued, or
    None once the socket is closed. The hello and the account's view end with this frame, so
    an idle socket does not hold them."""
    timeout = float(state.settings.extra.get("ws_hello_timeout", HELLO_TIMEOUT))
    try:
        hello = await asyncio.wait_for(_await_hello(websocket, fmt), timeout)
        greeting = await in_thread(_greet, state.db, hello.token, state.settings.currency)
    except TimeoutError:
        await _close(websocket, protocol.CLOSE_HELLO_TIMEOUT, "no hello within the time allowed")
        return None
    except ProtocolError as exc:
        await _close(websocket, exc.close_code, exc.reason)
        return None
    except Unauthorized:
        await _close(websocket, protocol.CLOSE_UNAUTHORIZED, "bad or revoked token")
        return None
    except WebSocketDisconnect:
        return None
    hub = state.hub
    conn = Connection(
        greeting.account_id,
        greeting.device_id,
        fmt,
        _sender(websocket, fmt),
        outbox_reader(state.db),
        after=greeting.last_seq if hello.after is None else hello.after,
        queue_limit=hub.queue_limit,
        on_push=hub.hooks.get("frame_pushed"),
    )
    try:
        await hub.join(conn)
    except TooManySockets as exc:
        await _close(websocket, CLOSE_TOO_MANY_SOCKETS, exc.reason)
        return None
    # First in the queue, so the pump sends it before the replay and any reply.
    welcome = protocol.welcome(greeting.account, greeting.device_id, greeting.last_seq)
    conn.send_control(protocol.encode(fmt, welcome))
    return conn


routes = [WebSocketRoute("/api/v1/ws", websocket_endpoint)]
