"""A cap on the size of a request's head (request line and headers) for uvicorn's httptools
protocol, which has none of its own: llhttp buffers a header of any length, so one client could
make the process hold megabytes per connection. Past the cap the client gets 431 with the
API's error body and the connection is closed; the process keeps serving everyone else.

The same protocol class is where each request's response cycle is given the connection's
one-write transport (``app/one_write.py``): head and body leave in one write.
"""

from __future__ import annotations

import asyncio
import json

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from app.one_write import HeadWithBody

# Request line plus every header, in bytes: nginx's default (4 buffers of 8 KiB) with room.
MAX_HEAD_BYTES = 32 * 1024

_BODY = json.dumps(
    {
        "error": {
            "code": "headers_too_large",
            "message": f"request line and headers must fit in {MAX_HEAD_BYTES} bytes",
            "field": None,
        }
    }
).encode()


_MALFORMED = json.dumps(
    {
        "error": {
            "code": "malformed_request",
            "message": "the request is not valid HTTP/1.1",
            "field": None,
        }
    }
).encode()


class HeadTooLarge(Exception):
    """A complete request head over the cap."""


class BoundedHeadProtocol(HttpToolsProtocol):
    """HttpToolsProtocol that answers 431 when a request's head outgrows `MAX_HEAD_BYTES`.

    A complete head is measured when the parser hands it over. An incomplete one is bounded by
    counting each read that ends with the head still incomplete (a read in which some head or
    message completed may carry bodies and pipelined requests and is not counted), so the
    parser never buffers more than the cap plus two reads of a head that never ends."""

    max_head_bytes = MAX_HEAD_BYTES
    _head_bytes = 0
    _in_head = True
    _boundary_in_read = False
    _refused = False

    def data_received(self, data: bytes) -> None:
        # Reset per read: a read that finishes a message carries that message's body, which
        # is no part of the next head.
        self._boundary_in_read = False
        super().data_received(data)
        if not self._in_head or self._boundary_in_read or self.transport.is_closing():
            return
        self._head_bytes += len(data)
        if self._head_bytes > self.max_head_bytes:
            self._send_431()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._boundary_in_read = True
        self._head_bytes = 0
        # A whole head can arrive in one read; measure what the parser handed over.
        size = len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)
        if size > self.max_head_bytes:
            self._refused = True
            # The parser reports this as a callback error, which uvicorn answers through
            # send_400_response: that is where the 431 goes out instead.
            raise HeadTooLarge(size)
        existing = self.cycle
        super().on_headers_complete()
        if self.cycle is not existing:
            # A new request's cycle (an upgrade to WebSocket makes none); its task has not
            # run yet, so every write of its response goes through the one-write transport.
            self.cycle.transport = self._response_transport  # type: ignore[assignment]

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._response_transport = HeadWithBody(transport, self.loop)

    def send_400_response(self, msg: str) -> None:
        if self._refused:
            self._send_431()
        else:
            # The API's error body (spec §2), not uvicorn's plain text: a client parses one
            # shape of error whichever layer refused it.
            self._send_closing(b"400 Bad Request", _MALFORMED)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_head = True
        self._boundary_in_read = True

    def _send_431(self) -> None:
        self.logger.warning("Request head larger than %d bytes refused.", self.max_head_bytes)
        self._send_closing(b"431 Request Header Fields Too Large", _BODY)

    def _send_closing(self, status: bytes, body: bytes) -> None:
        head = (
            b"HTTP/1.1 " + status + b"\r\n"
            b"content-type: application/json\r\n"
            b"content-length: " + str(len(body)).encode("ascii") + b"\r\n"
            b"connection: close\r\n\r\n"
        )
        self.transport.write(head + body)
        self.transport.close()
