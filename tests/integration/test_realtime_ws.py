"""The WebSocket of spec §8 in one process (memory broker), on SQLite and PostgreSQL:
fan-out of a payment to every device, replay, live-only, the handshake's close codes,
ping/pong, error frames, and revocation."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from app.main import create_app
from app.settings import Settings
from tests.api import Api, User
from tests.conftest import ADMIN_TOKEN

JSON = "paycode.v1.json"
MSGPACK = "paycode.v1.msgpack"


@pytest.fixture
def rt_client(database_url: str) -> Iterator[TestClient]:
    settings = Settings(
        database_url=database_url,
        admin_token=ADMIN_TOKEN,
        public_url_setting="http://testserver",
        extra={"ws_hello_timeout": 0.3},
    )
    with TestClient(create_app(settings, migrate_schema=False)) as client:
        try:
            yield client
        finally:
            # A test that failed with a socket open would otherwise leave its session running,
            # and the client's exit would wait for it for ever instead of reporting the failure.
            for socket in list(OPEN):
                with contextlib.suppress(Exception):
                    socket.close()


@pytest.fixture
def rt_api(rt_client: TestClient) -> Api:
    return Api(rt_client, ADMIN_TOKEN)


OPEN: list[Socket] = []


class Socket:
    """A test-side socket speaking one subprotocol."""

    def __init__(self, client: TestClient, fmt: str | None = JSON) -> None:
        self.fmt = fmt
        self.cm = client.websocket_connect("/api/v1/ws", subprotocols=[fmt] if fmt else [])
        self.ws = self.cm.__enter__()
        OPEN.append(self)

    def send(self, frame: dict[str, Any]) -> None:
        if self.fmt == MSGPACK:
            self.ws.send_bytes(msgpack.packb(frame))
        else:
            self.ws.send_json(frame)

    def recv(self) -> dict[str, Any]:
        if self.fmt == MSGPACK:
            return dict(msgpack.unpackb(self.ws.receive_bytes()))
        return dict(self.ws.receive_json())

    def hello(self, user: User, after: int | None) -> dict[str, Any]:
        self.send({"type": "hello", "token": user.token, "after": after})
        welcome = self.recv()
        assert welcome["type"] == "welcome", welcome
        return welcome

    def events_until_pong(self) -> list[dict[str, Any]]:
        """Every frame queued before a ping's answer: what the server had sent so far."""
        self.send({"type": "ping"})
        frames = []
        while (frame := self.recv())["type"] != "pong":
            frames.append(frame)
        return frames

    def close(self) -> None:
        if self in OPEN:
            OPEN.remove(self)
            self.cm.__exit__(None, None, None)


def close_code(socket: Socket) -> int:
    """The code the server closed the socket with (frames before it are skipped)."""
    with pytest.raises(WebSocketDisconnect) as info:
        while True:
            socket.recv()
    socket.close()
    return int(info.value.code)


def events_of(api: Api, user: User, after: int) -> list[dict[str, Any]]:
    response = api.get(f"/events?after={after}&limit=200", user)
    assert response.status_code == 200, response.text
    return list(response.json()["data"])


def collect(socket: Socket, count: int) -> list[dict[str, Any]]:
    frames = [socket.recv() for _ in range(count)]
    return frames + socket.events_until_pong()


def test_a_payment_reaches_every_device_of_agent_payee_and_payer_once_in_order(
    rt_client: TestClient, rt_api: Api
) -> None:
    """3 devices of the agent, 2 of the payee and 1 of the payer, in msgpack and JSON, each
    get their account's events of one payment (payment.succeeded, and code.paid for agent and
    payee) exactly once, in seq order, as the outbox has them."""
    payee, agent, payer = rt_api.user(), rt_api.user(), rt_api.user(funds=10_000)
    agency = rt_api.agency(payee, agent)
    code = rt_api.code(agent, agency["id"], amount=1250)
    devices = {
        agent.handle: [agent, rt_api.log_in(agent.handle, "till"), rt_api.log_in(agent.handle)],
        payee.handle: [payee, rt_api.log_in(payee.handle, "office")],
        payer.handle: [payer],
    }
    sockets: list[tuple[User, Socket, int]] = []
    for i, (_, users) in enumerate(devices.items()):
        for j, user in enumerate(users):
            socket = Socket(rt_client, MSGPACK if (i + j) % 2 else JSON)
            welcome = socket.hello(user, None)
            sockets.append((user, socket, welcome["last_seq"]))
    paid = rt_api.post("/payments", payer, json={"code": code["token"]})
    assert paid.status_code == 201, paid.text
    for user, socket, before in sockets:
        truth = events_of(rt_api, user, before)
        expected_types = {"payment.succeeded"} | (
            {"code.paid"} if user.handle != payer.handle else set()
        )
        assert {e["type"] for e in truth} == expected_types
        frames = collect(socket, len(truth))
        assert [f["seq"] for f in frames] == [e["seq"] for e in truth]
        assert [f["event"]["type"] for f in frames] == [e["type"] for e in truth]
        payment = next(f for f in frames if f["event"]["type"] == "payment.succeeded")
        assert payment["event"]["data"]["id"] == paid.json()["id"]
        socket.close()


def test_reconnect_with_after_replays_exactly_the_missed_events(
    rt_client: TestClient, rt_api: Api
) -> None:
    """A socket saying `after: k` gets every event with seq > k, then live ones; none twice."""
    user = rt_api.user()
    for amount in (1, 2, 3, 4):
        rt_api.deposit(user.handle, amount)
    socket = Socket(rt_client)
    welcome = socket.hello(user, 1)
    assert welcome["last_seq"] == 4
    assert welcome["device_id"] == user.device_id
    assert welcome["account"]["handle"] == user.handle
    replay = [socket.recv() for _ in range(3)]
    assert [f["seq"] for f in replay] == [2, 3, 4]
    assert [f["event"]["data"]["amount"] for f in replay] == [2, 3, 4]
    rt_api.deposit(user.handle, 5)
    assert [f["seq"] for f in collect(socket, 1)] == [5]
    socket.close()


def test_after_null_gets_live_events_only(rt_client: TestClient, rt_api: Api) -> None:
    """`after: null` replays nothing: the first event frame is the next one committed."""
    user = rt_api.user(funds=100)
    rt_api.deposit(user.handle, 7)
    socket = Socket(rt_client, MSGPACK)
    welcome = socket.hello(user, None)
    assert welcome["last_seq"] == 2
    assert socket.events_until_pong() == []
    rt_api.deposit(user.handle, 9)
    frames = collect(socket, 1)
    assert [(f["seq"], f["event"]["data"]["amount"]) for f in frames] == [(3, 9)]
    socket.close()


def test_json_is_the_default_subprotocol(rt_client: TestClient, rt_api: Api) -> None:
    """A client that asks for no subprotocol speaks JSON text frames."""
    user = rt_api.user()
    socket = Socket(rt_client, None)
    socket.fmt = JSON
    assert socket.ws.accepted_subprotocol is None
    assert socket.hello(user, None)["last_seq"] == 0
    socket.close()


def test_handshake_failures_close_with_their_codes(rt_client: TestClient, rt_api: Api) -> None:
    """No hello in time → 4408; a bad token → 4401; a revoked token → 4401."""
    user = rt_api.user()
    silent = Socket(rt_client)
    assert close_code(silent) == 4408
    bad = Socket(rt_client)
    bad.send({"type": "hello", "token": "not-a-token", "after": None})
    assert close_code(bad) == 4401
    other = rt_api.log_in(user.handle, "tablet")
    assert rt_api.delete("/sessions/current", other).status_code == 204
    revoked = Socket(rt_client, MSGPACK)
    revoked.send({"type": "hello", "token": other.token, "after": 0})
    assert close_code(revoked) == 4401


def test_ping_pong_unknown_frames_and_malformed_frames(rt_client: TestClient, rt_api: Api) -> None:
    """ping → pong; an unknown type → an error frame and the socket stays up; invalid JSON
    → 1007; a frame that is not a map → 1008; a binary frame on JSON → 1008; garbage msgpack
    → 1007; a frame over 64 KiB → 1009; a bad `after` → 1008."""
    user = rt_api.user()
    socket = Socket(rt_client)
    socket.hello(user, 0)
    socket.send({"type": "ping"})
    assert socket.recv() == {"type": "pong"}
    socket.send({"type": "subscribe", "to": "everything"})
    error = socket.recv()
    assert error["type"] == "error" and error["code"] == "unknown_type"
    socket.send({"type": "ping"})
    assert socket.recv() == {"type": "pong"}
    socket.ws.send_text("{not json")
    assert close_code(socket) == 1007

    cases: list[tuple[str, bool, Any, int]] = [
        (JSON, True, "[1, 2]", 1008),
        (JSON, True, b"\x81\xa4type\xa4ping", 1008),
        (MSGPACK, False, b"\xc1\xc1\xc1", 1007),
        (JSON, True, '{"type": "ping", "pad": "' + "x" * 70_000 + '"}', 1009),
        (JSON, False, '{"type": "hello", "token": "t", "after": -1}', 1008),
    ]
    for fmt, greet, raw, code in cases:
        sock = Socket(rt_client, fmt)
        if greet:
            sock.hello(user, None)
        if isinstance(raw, bytes):
            sock.ws.send_bytes(raw)
        else:
            sock.ws.send_text(raw)
        assert close_code(sock) == code, raw[:40]


def test_revoking_a_device_closes_its_sockets_with_4401(rt_client: TestClient, rt_api: Api) -> None:
    """DELETE /devices/{id} closes that device's socket with 4401 and leaves the account's
    other device connected and receiving."""
    user = rt_api.user()
    tablet = rt_api.log_in(user.handle, "tablet")
    # Each socket says hello as soon as it is open: the fixture's hello deadline is 0.3 s.
    phone_socket = Socket(rt_client)
    phone_socket.hello(user, None)
    tablet_socket = Socket(rt_client, MSGPACK)
    tablet_socket.hello(tablet, None)
    assert rt_api.delete(f"/devices/{tablet.device_id}", user).status_code == 204
    assert close_code(tablet_socket) == 4401
    rt_api.deposit(user.handle, 5)
    assert [f["seq"] for f in collect(phone_socket, 1)] == [1]
    phone_socket.close()
