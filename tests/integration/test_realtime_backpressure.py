"""Backpressure on a real uvicorn server: a client that stops reading is closed with 1013
once its bounded queue fills, while another socket of the same account gets every event."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import uvicorn

from app.main import create_app
from app.settings import Settings
from realtime.client import LiveClient
from realtime.protocol import CLOSE_TRY_AGAIN
from tests.conftest import ADMIN_TOKEN
from tests.services import free_port

PASSWORD = "correct horse battery"
QUEUE_LIMIT = 16


class StuckSocket:
    """A WebSocket client that says hello and then never reads, with a tiny receive buffer:
    written by hand so no library reads on its behalf."""

    def __init__(self, port: int) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.connect(("127.0.0.1", port))
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            (
                f"GET /api/v1/ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            head += self.sock.recv(1)
        assert head.startswith(b"HTTP/1.1 101"), head

    def send_text(self, text: str) -> None:
        payload = text.encode()
        assert len(payload) < 126
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(bytes([0x81, 0x80 | len(payload)]) + mask + masked)

    def read_close_code(self) -> int | None:
        """Read everything the server sent, frame by frame, up to its close frame."""
        self.sock.settimeout(20)
        buffer = b""

        def take(n: int) -> bytes:
            nonlocal buffer
            while len(buffer) < n:
                chunk = self.sock.recv(1 << 16)
                if not chunk:
                    raise EOFError
                buffer += chunk
            out, buffer = buffer[:n], buffer[n:]
            return out

        try:
            while True:
                first, second = take(2)
                length = second & 0x7F
                if length == 126:
                    length = int.from_bytes(take(2), "big")
                elif length == 127:
                    length = int.from_bytes(take(8), "big")
                payload = take(length)
                if first & 0x0F == 0x8:
                    return int.from_bytes(payload[:2], "big") if payload else None
        except EOFError:
            return None
        finally:
            self.sock.close()


class InProcessServer:
    def __init__(self, database_url: str) -> None:
        settings = Settings(
            database_url=database_url,
            admin_token=ADMIN_TOKEN,
            extra={"ws_queue_limit": QUEUE_LIMIT},
        )
        self.app = create_app(settings, migrate_schema=False)
        self.port = free_port()
        config = uvicorn.Config(
            self.app,
            host="127.0.0.1",
            port=self.port,
            ws_per_message_deflate=False,
            log_level="warning",
        )
        self.server = uvicorn.Server(config)
        # Accepted sockets inherit a small send buffer, so a stuck client blocks the server's
        # writes after kilobytes rather than the megabytes kernel autotuning would allow.
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)
        listener.bind(("127.0.0.1", self.port))
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [listener]}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> InProcessServer:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *_exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)

    def connections(self, account_id: str) -> list[Any]:
        return list(self.app.state.paycode.hub.connections(account_id))

    def close_codes(self, account_id: str) -> list[int | None]:
        return [c.close_code for c in self.connections(account_id)]


@pytest.fixture
def server(database_url: str) -> Iterator[InProcessServer]:
    with InProcessServer(database_url) as running:
        yield running


def test_a_client_that_never_reads_is_closed_with_1013_and_others_keep_receiving(
    server: InProcessServer,
) -> None:
    """The payer has a socket that never reads and one that does. Payments with large
    receipts fill the stuck socket's buffers and then its queue (bounded at 16 frames): it is
    closed with 1013 (seen once it reads again), while the reading socket receives every
    payment, in order, and the server never holds more than the bound for it."""

    async def main() -> None:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
            tokens = {}
            for handle in ("bp_payee", "bp_agent", "bp_payer"):
                body = {"handle": handle, "display_name": handle, "password": PASSWORD}
                assert (await http.post("/api/v1/accounts", json=body)).status_code == 201
                login = {"handle": handle, "password": PASSWORD, "device_name": "d"}
                response = await http.post("/api/v1/sessions", json=login)
                tokens[handle] = response.json()["token"]
                payer_id = response.json()["account"]["id"]
            await http.post(
                "/api/v1/admin/deposits",
                json={"handle": "bp_payer", "amount": 1_000_000},
                headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
            )

            def auth(handle: str) -> dict[str, str]:
                return {"Authorization": f"Bearer {tokens[handle]}"}

            agency = await http.post(
                "/api/v1/agencies", json={"agent": "bp_agent"}, headers=auth("bp_payee")
            )
            # About 25 KB of receipt per payment, so a few fill the socket's buffers.
            items = [
                {"name": f"{i:03d}" + "x" * 197, "quantity": 1, "unit_amount": 1}
                for i in range(100)
            ]

            stuck = StuckSocket(server.port)
            stuck.send_text(f'{{"type":"hello","token":"{tokens["bp_payer"]}","after":null}}')

            live = LiveClient(server.url, tokens["bp_payer"], after=None)
            received: list[Any] = []

            async def drain() -> None:
                async for event in live:
                    received.append(event)

            reader = asyncio.create_task(drain())
            deadline = time.monotonic() + 10
            while live.welcome is None:
                assert time.monotonic() < deadline, "no welcome"
                await asyncio.sleep(0.01)

            payments = []
            for _ in range(200):
                code = await http.post(
                    "/api/v1/codes",
                    json={"agency_id": agency.json()["id"], "kind": "dynamic", "items": items},
                    headers=auth("bp_agent"),
                )
                paid = await http.post(
                    "/api/v1/payments",
                    json={"code": code.json()["token"]},
                    headers=auth("bp_payer"),
                )
                assert paid.status_code == 201, paid.text
                payments.append(paid.json()["id"])
                codes = server.close_codes(payer_id)
                assert all(c.queued <= QUEUE_LIMIT for c in server.connections(payer_id))
                if len(codes) < 2 or CLOSE_TRY_AGAIN in codes:
                    break  # the stuck socket was dropped
            assert len(payments) < 200, "the stuck socket was never dropped"
            deadline = time.monotonic() + 10
            while len(received) < len(payments):
                assert time.monotonic() < deadline, "the reading socket fell behind"
                await asyncio.sleep(0.01)
            assert [e.data["id"] for e in received] == payments
            assert live.close_codes == []

            assert await asyncio.to_thread(stuck.read_close_code) == CLOSE_TRY_AGAIN
            await live.close()
            reader.cancel()

    asyncio.run(main())
