"""Request size limits on a real `paycode serve`: a request line plus headers over 32 KiB is
431 with the API's error body and a closed connection, however it arrives (one huge header,
many small ones, a long URL, a head that never ends, a WebSocket upgrade); a body over 64 KiB
is 413; and the process keeps serving after a flood of such requests."""

from __future__ import annotations

import json
import re
import socket
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from app.http_limits import MAX_HEAD_BYTES
from tests.conftest import ADMIN_TOKEN
from tests.server import running_server
from tests.services import SqliteFactory


@pytest.fixture(scope="module")
def base(sqlite_factory: SqliteFactory) -> Iterator[str]:
    with running_server(sqlite_factory.create(), ADMIN_TOKEN) as url:
        yield url


def address(base: str) -> tuple[str, int]:
    host, port = base.removeprefix("http://").split(":")
    return host, int(port)


def raw_exchange(base: str, head: bytes, chunk: int | None = None) -> bytes:
    """Send `head` on a fresh connection (in `chunk`-byte writes if given) and read the whole
    answer until the server closes or 5 s pass. A server that closes while we still write is
    fine: whatever it said before is returned."""
    with socket.create_connection(address(base), timeout=5) as sock:
        try:
            if chunk is None:
                sock.sendall(head)
            else:
                for start in range(0, len(head), chunk):
                    sock.sendall(head[start : start + chunk])
        except OSError:
            pass
        answer = b""
        try:
            while True:
                data = sock.recv(65536)
                if not data:
                    break
                answer += data
        except OSError:
            pass
        return answer


def status_and_body(answer: bytes) -> tuple[int, dict[str, Any]]:
    head, _, body = answer.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(body) if body else {}


def assert_431(answer: bytes) -> None:
    assert answer, "the server said nothing before closing"
    status, body = status_and_body(answer)
    assert status == 431
    assert body["error"]["code"] == "headers_too_large"
    assert b"connection: close" in answer.lower()


def request(path: str = "/healthz", headers: bytes = b"") -> bytes:
    return b"GET " + path.encode() + b" HTTP/1.1\r\nHost: t\r\nConnection: close\r\n" + headers


def test_a_request_that_is_not_valid_http_is_400_with_the_error_body(base: str) -> None:
    """A Content-Length that is not a number: 400 malformed_request in the API's JSON error
    body (not the HTTP server's plain text), and the connection closed."""
    answer = raw_exchange(base, request("/api/v1/me", b"Content-Length: _\r\n\r\n"))
    status, body = status_and_body(answer)
    assert status == 400
    assert body["error"]["code"] == "malformed_request"
    assert b"content-type: application/json" in answer.lower()
    assert b"connection: close" in answer.lower()


def test_a_head_just_under_the_cap_is_served(base: str) -> None:
    """Legitimate large heads still work: 30 KiB of headers get the normal answer."""
    answer = raw_exchange(base, request(headers=b"X-Pad: " + b"a" * 30_000 + b"\r\n\r\n"))
    assert status_and_body(answer)[0] == 200


@pytest.mark.parametrize(
    "head",
    [
        request(headers=b"X-Pad: " + b"a" * (MAX_HEAD_BYTES + 1) + b"\r\n\r\n"),
        request(headers=b"".join(b"X-H%d: vvvvvvvv\r\n" % i for i in range(3000)) + b"\r\n"),
        request(path="/healthz?q=" + "a" * (MAX_HEAD_BYTES + 1), headers=b"\r\n"),
    ],
    ids=["one-huge-header", "many-small-headers", "long-url"],
)
def test_a_head_over_the_cap_is_431(base: str, head: bytes) -> None:
    """Whether the head arrives whole in one read or the cap is crossed by a header, many
    headers or the URL, the answer is 431 headers_too_large and the connection closes."""
    assert_431(raw_exchange(base, head))


def test_a_head_that_never_ends_is_cut_off(base: str) -> None:
    """8 MiB of one header, written in 16 KiB pieces with no end of head: the server answers
    431 and closes once the cap is passed, instead of buffering all of it."""
    endless = request(headers=b"X-Pad: " + b"a" * (8 * 1024 * 1024))
    assert_431(raw_exchange(base, endless, chunk=16 * 1024))


def test_an_oversized_websocket_upgrade_is_431(base: str) -> None:
    """The WebSocket handshake goes through the same head limit."""
    upgrade = (
        b"GET /api/v1/ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        b"X-Pad: " + b"a" * (MAX_HEAD_BYTES + 1) + b"\r\n\r\n"
    )
    assert_431(raw_exchange(base, upgrade))


def test_a_body_over_64_kib_is_413_on_a_real_server(base: str) -> None:
    """Through a real socket, with a length and chunked alike, a body over 64 KiB is 413
    payload_too_large."""
    big = b"{" + b" " * (70 * 1024) + b"}"

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(big), 8192):
            yield big[start : start + 8192]

    with httpx.Client(base_url=base, timeout=10) as http:
        for content in (big, chunks()):
            response = http.post(
                "/api/v1/accounts", content=content, headers={"Content-Type": "application/json"}
            )
            assert response.status_code == 413
            assert response.json()["error"]["code"] == "payload_too_large"


def test_the_server_keeps_serving_through_a_flood_of_huge_heads(base: str) -> None:
    """40 connections at once each push 1 MiB of header: every one gets 431, and afterwards
    the process still answers a normal request (sign-up) correctly."""
    answers: list[bytes] = []
    flood = request(headers=b"X-Pad: " + b"a" * (1024 * 1024) + b"\r\n\r\n")

    def attack() -> None:
        answers.append(raw_exchange(base, flood, chunk=64 * 1024))

    threads = [threading.Thread(target=attack) for _ in range(40)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(answers) == 40
    for answer in answers:
        assert_431(answer)
    with httpx.Client(base_url=base, timeout=10) as http:
        assert http.get("/healthz").status_code == 200
        body = {"handle": "afterflood", "display_name": "After", "password": "long enough pw 1"}
        assert http.post("/api/v1/accounts", json=body).status_code == 201


def test_a_large_body_is_never_mistaken_for_the_next_head(base: str) -> None:
    """On one keep-alive connection, a request whose 48 KiB body arrives in its own write (so
    the read that completes it is body only) is answered, and so is the next request: body
    bytes never count against the head cap."""
    body = b'{"pad": "' + b"x" * (48 * 1024) + b'"}'
    first = (
        b"POST /api/v1/accounts HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n"
    )
    second = b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    with socket.create_connection(address(base), timeout=5) as sock:
        sock.sendall(first)
        threading.Event().wait(0.05)
        sock.sendall(body)
        threading.Event().wait(0.05)
        sock.sendall(second)
        answer = b""
        while True:
            data = sock.recv(65536)
            if not data:
                break
            answer += data
    statuses = [int(code) for code in re.findall(rb"HTTP/1\.1 (\d{3}) ", answer)]
    assert statuses == [422, 200], answer[:300]
