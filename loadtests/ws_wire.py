"""A lean WebSocket client (RFC 6455) on an asyncio protocol, for the benchmark's devices only.

Like ``loadtests/wire.py`` for HTTP: the generator shares the machine's cores with the server,
and a general-purpose client spends far more per frame than the measurement needs (a task
switch, a queue and an assembler per message). Here each message the server sends is handed
to a callback from ``data_received``, decoded and nothing else. It speaks what the devices
need: the opening handshake with one subprotocol, unmasked server frames (fragmented or
not), masked client frames, pong for ping, and the closing handshake.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import struct
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_CONTINUATION, _TEXT, _BINARY, _CLOSE, _PING, _PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
OnMessage = Callable[[str | bytes], None]


class HandshakeError(ValueError):
    """The server did not switch protocols as asked."""


def _masked(opcode: int, payload: bytes) -> bytes:
    """A client frame: FIN set, the payload masked with a fresh key as RFC 6455 requires."""
    length = len(payload)
    if length < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | length)
    elif length < 1 << 16:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, length)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, length)
    key = os.urandom(4)
    repeated = (key * (length // 4 + 1))[:length]
    body = (int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")).to_bytes(
        length, "big"
    )
    return head + key + body


class _Protocol(asyncio.Protocol):
    def __init__(self, key: str, subprotocol: str, on_message: OnMessage) -> None:
        self._accept = base64.b64encode(hashlib.sha1(key.encode() + _GUID).digest()).decode()
        self._subprotocol = subprotocol
        self._on_message = on_message
        self.transport: Any = None
        self._buffer = bytearray()
        self._open = False
        self._fragments: list[bytes] = []
        self._fragmented_opcode = _TEXT
        # Set once this side has sent its Close frame: the server's is then the answer.
        self.closing = False
        loop = asyncio.get_running_loop()
        self.opened: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        lost = ConnectionError(f"the WebSocket connection was lost: {exc}")
        for waiter in (self.opened, self.closed):
            if not waiter.done():
                waiter.set_exception(lost)
        # Whoever waits on one of them is told; an unawaited one must not warn.
        for waiter in (self.opened, self.closed):
            if waiter.done() and not waiter.cancelled():
                waiter.exception()

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        try:
            if not self._open and not self._handshake():
                return
            self._frames()
        except Exception as exc:
            # A protocol error, or the callback's own (a frame it cannot read): either way the
            # socket is done, and whoever waits on it is told why.
            if not self.opened.done():
                self.opened.set_exception(exc)
            elif not self.closed.done():
                self.closed.set_exception(exc)
            self.transport.abort()

    def _handshake(self) -> bool:
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            return False
        lines = bytes(self._buffer[:end]).decode("latin-1").split("\r\n")
        del self._buffer[: end + 4]
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if lines[0].split(" ", 2)[1:2] != ["101"]:
            raise HandshakeError(f"the server answered {lines[0]!r}")
        if headers.get("sec-websocket-accept") != self._accept:
            raise HandshakeError("wrong Sec-WebSocket-Accept")
        if headers.get("sec-websocket-protocol") != self._subprotocol:
            raise HandshakeError(f"the server chose no {self._subprotocol} subprotocol")
        self._open = True
        self.opened.set_result(None)
        return True

    def _frames(self) -> None:
        buffer = self._buffer
        while len(buffer) >= 2:
            first, second = buffer[0], buffer[1]
            if second & 0x80:
                raise ValueError("the server masked a frame")
            length, at = second & 0x7F, 2
            if length == 126:
                if len(buffer) < 4:
                    return
                length, at = struct.unpack_from("!H", buffer, 2)[0], 4
            elif length == 127:
                if len(buffer) < 10:
                    return
                length, at = struct.unpack_from("!Q", buffer, 2)[0], 10
            if len(buffer) < at + length:
                return
            payload = bytes(buffer[at : at + length])
            del buffer[: at + length]
            self._frame(first & 0x80, first & 0x0F, payload)

    def _frame(self, fin: int, opcode: int, payload: bytes) -> None:
        if opcode == _PING:
            self.transport.write(_masked(_PONG, payload))
        elif opcode == _CLOSE:
            if not self.closed.done():
                if not self.closing:
                    # The server began the closing handshake: answer it.
                    self.transport.write(_masked(_CLOSE, payload[:2]))
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
                self.closed.set_exception(ConnectionError(f"closed by the server ({code})"))
            self.transport.close()
        elif opcode in (_TEXT, _BINARY, _CONTINUATION):
            if opcode != _CONTINUATION:
                self._fragmented_opcode = opcode
            self._fragments.append(payload)
            if fin:
                whole = b"".join(self._fragments)
                self._fragments.clear()
                text = self._fragmented_opcode == _TEXT
                self._on_message(whole.decode() if text else whole)


class LeanSocket:
    """An open WebSocket: messages go to the callback given to :func:`connect`."""

    def __init__(self, protocol: _Protocol) -> None:
        self._protocol = protocol
        self.transport = protocol.transport

    @property
    def closed(self) -> asyncio.Future[None]:
        """Fails with ``ConnectionError`` once the connection is closed or lost."""
        return self._protocol.closed

    def send(self, text: str) -> None:
        self.transport.write(_masked(_TEXT, text.encode()))

    async def close(self, seconds: float = 2.0) -> None:
        """The closing handshake (1000), then the TCP connection."""
        if not self.transport.is_closing() and not self._protocol.closing:
            self._protocol.closing = True
            self.transport.write(_masked(_CLOSE, struct.pack("!H", 1000)))
        try:
            await asyncio.wait_for(asyncio.shield(self.closed), seconds)
        except (ConnectionError, TimeoutError):
            pass
        finally:
            self.transport.abort()


async def connect(
    url: str, subprotocol: str, on_message: OnMessage, *, seconds: float = 30.0
) -> LeanSocket:
    """Open ``url`` (``ws://host:port/path``) asking for ``subprotocol``."""
    parts = urlsplit(url)
    if parts.scheme != "ws" or parts.hostname is None:
        raise ValueError(f"only ws:// URLs: {url!r}")
    key = base64.b64encode(os.urandom(16)).decode()
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(seconds):
        transport, protocol = await loop.create_connection(
            lambda: _Protocol(key, subprotocol, on_message), parts.hostname, parts.port or 80
        )
        host = f"{parts.hostname}:{parts.port}" if parts.port else parts.hostname
        request = (
            f"GET {parts.path or '/'} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            f"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: {subprotocol}\r\n\r\n"
        )
        transport.write(request.encode())
        try:
            await protocol.opened
        except BaseException:
            transport.abort()
            raise
    return LeanSocket(protocol)
