"""Fuzzing the WebSocket frame decoder (msgpack and JSON): whatever a client sends, the
decoder answers a frame map or a clean close code, and a real server closes a socket that
sent a malformed frame with 1007/1008 (1009 past 64 KiB) and keeps serving everyone else."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from realtime import protocol
from tests.api import Api, User
from tests.conftest import ADMIN_TOKEN
from tests.server import running_server
from tests.services import unavailable
from tests.strategies import any_text

CLEAN_CLOSES = {protocol.CLOSE_INVALID_DATA, protocol.CLOSE_POLICY, protocol.CLOSE_TOO_BIG}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | any_text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(any_text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
# Maps with a non-string key, non-map frames, maps without a string type.
msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.binary(max_size=20)
    | any_text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.integers(-(2**63), 2**63 - 1) | any_text(max_size=8) | st.binary(max_size=4),
            inner,
            max_size=4,
        )
    ),
    max_leaves=12,
)
wires = st.one_of(
    st.tuples(st.just(protocol.JSON), any_text(max_size=300)),
    st.tuples(st.just(protocol.JSON), json_values.map(json.dumps)),
    st.tuples(st.just(protocol.JSON), st.binary(max_size=50)),
    st.tuples(st.just(protocol.MSGPACK), st.binary(max_size=300)),
    st.tuples(
        st.just(protocol.MSGPACK),
        # A lone surrogate packed as its UTF-8-shaped bytes: a str no strict decoder takes.
        msgpack_values.map(
            lambda v: msgpack.packb(v, use_bin_type=True, unicode_errors="surrogatepass")
        ),
    ),
    st.tuples(st.just(protocol.MSGPACK), any_text(max_size=50)),
)


@given(wire=wires)
@settings(max_examples=400, deadline=None)
def test_the_decoder_answers_a_frame_or_a_clean_close_code(wire: tuple[str, Any]) -> None:
    """Any text or bytes on either subprotocol decodes to a map with a string type, or raises
    ProtocolError with 1007, 1008 or 1009 — never another exception."""
    fmt, message = wire
    try:
        frame = protocol.decode(fmt, message)
    except protocol.ProtocolError as exc:
        assert exc.close_code in CLEAN_CLOSES
        return
    assert isinstance(frame, dict) and isinstance(frame["type"], str)


def test_the_decoder_refuses_frames_past_64_kib() -> None:
    """A frame over 64 KiB is 1009 on both subprotocols, before any parsing."""
    big = {"type": "ping", "pad": "x" * protocol.MAX_FRAME}
    for fmt, message in (
        (protocol.JSON, json.dumps(big)),
        (protocol.MSGPACK, msgpack.packb(big, use_bin_type=True)),
    ):
        with pytest.raises(protocol.ProtocolError) as caught:
            protocol.decode(fmt, message)
        assert caught.value.close_code == protocol.CLOSE_TOO_BIG


def malformed(fmt: str, wire: Any) -> bool:
    """True if the decoder refuses the wire (so the server must close the socket)."""
    try:
        protocol.decode(fmt, wire)
    except protocol.ProtocolError:
        return True
    return False


def sendable(wire: tuple[str, Any]) -> bool:
    """A text frame is UTF-8 on the wire: a str holding a lone surrogate cannot be sent (as
    JSON it travels as a \\u escape, which the JSON strategies produce)."""
    message = wire[1]
    if isinstance(message, bytes):
        return True
    try:
        message.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def served(
    request: pytest.FixtureRequest, sqlite_factory: Any, pg_factory: Any
) -> Iterator[tuple[str, User]]:
    """A real server on each database, and a logged-in account."""
    if request.param == "sqlite":
        url = sqlite_factory.create()
    else:
        if not pg_factory.available():
            unavailable("PostgreSQL is not reachable on 127.0.0.1:5432")
        url = pg_factory.create()
    try:
        with running_server(url, ADMIN_TOKEN) as base:
            with httpx.Client(base_url=base, timeout=10) as http:
                user = Api(http, ADMIN_TOKEN).user()
            yield base, user
    finally:
        if request.param == "postgresql":
            pg_factory.drop(url)


def close_code_after(base: str, fmt: str, frames: list[Any]) -> int | None:
    """Send the frames on a fresh socket; the close code the server chose, or None if open."""
    url = "ws://" + base.removeprefix("http://") + "/api/v1/ws"
    with connect(url, subprotocols=[fmt], max_size=None) as socket:  # type: ignore[list-item]
        try:
            for frame in frames:
                socket.send(frame)
            while True:
                socket.recv(timeout=5)
        except ConnectionClosed as closed:
            return closed.rcvd.code if closed.rcvd else None
        except TimeoutError:
            return None


@given(wire=wires.filter(lambda w: sendable(w) and malformed(*w)))
@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.filter_too_much],
)
def test_a_malformed_frame_closes_the_socket_and_the_server_lives(
    served: tuple[str, User], wire: tuple[str, Any]
) -> None:
    """Before hello and after a good hello alike, a frame the decoder refuses closes that
    socket with 1007/1008/1009; the process keeps answering HTTP and new sockets."""
    base, user = served
    fmt, message = wire
    hello = protocol.encode(fmt, {"type": "hello", "token": user.token, "after": None})
    assert close_code_after(base, fmt, [message]) in CLEAN_CLOSES
    assert close_code_after(base, fmt, [hello, message]) in CLEAN_CLOSES
    assert httpx.get(f"{base}/healthz", timeout=5).status_code == 200


@pytest.mark.parametrize(
    "frame",
    [
        '{"type": "hello", "token": "\\ud800", "after": null}',
        '{"type": "hello", "token": "t", "after": null, "x": "\\udfff"}',
        '{"type": "\\ud800"}',
        '{"\\ud800": 1, "type": "ping"}',
    ],
)
def test_a_json_frame_with_a_lone_surrogate_is_unreadable_data(
    served: tuple[str, User], frame: str
) -> None:
    """A \\u escape of a lone surrogate anywhere in a JSON frame, before or after hello, is
    text that is not Unicode: 1007, like invalid UTF-8, and the server lives on."""
    base, user = served
    hello = json.dumps({"type": "hello", "token": user.token, "after": None})
    assert close_code_after(base, protocol.JSON, [frame]) == protocol.CLOSE_INVALID_DATA
    assert close_code_after(base, protocol.JSON, [hello, frame]) == protocol.CLOSE_INVALID_DATA
    assert httpx.get(f"{base}/healthz", timeout=5).status_code == 200


@pytest.mark.parametrize("after", [-1, 2**31, 2**63, 1.5, True, "7", [1]])
def test_a_hello_with_an_impossible_after_is_a_policy_close(
    served: tuple[str, User], after: Any
) -> None:
    """`after` must be null or an integer the event table can hold: anything else is 1008,
    never a server error on the replay query."""
    base, user = served
    hello = json.dumps({"type": "hello", "token": user.token, "after": after})
    assert close_code_after(base, protocol.JSON, [hello]) == protocol.CLOSE_POLICY
