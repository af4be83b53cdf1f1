"""What is refused before routing, and what an unexpected exception becomes.

The parts of a request the app reads as text must be Unicode text.

Starlette and uvicorn decode a percent-escape that is not UTF-8 (or that is a UTF-8-encoded
surrogate, which strict UTF-8 refuses too) into U+FFFD, and header values as Latin-1, so such
input would reach a route as some other, well-formed text. It is refused instead, once, before
routing: the same 400 as a body that is not UTF-8 (spec §2). Bodies are checked where they are
read (``app.http.decode_json``), WebSocket frames where they are decoded
(``realtime.protocol.decode``).

An exception no handler knows is logged once, with its traceback and the request id, and
answered 500 (or a WebSocket closed 1011); it is not passed on to the server, which would log
it a second time.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from urllib.parse import unquote_to_bytes

from app.errors import error_response
from app.observability import ASGIApp, Message, Receive, Scope, Send, route_template

log = logging.getLogger("paycode.errors")

# The header values the app reads as text.
TEXT_HEADERS = frozenset((b"authorization", b"idempotency-key"))


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _percent_decodes_to_text(raw: bytes) -> bool:
    # Most paths and queries are plain ASCII with no escape: nothing to decode.
    if b"%" not in raw and raw.isascii():
        return True
    return _is_utf8(unquote_to_bytes(raw))


def undecodable_part(scope: Scope) -> str | None:
    """The name of the first part of an HTTP or WebSocket request that is not Unicode text
    (``"path"``, ``"query"`` or a header's name), or None when every part is."""
    raw_path = scope.get("raw_path")
    if raw_path is not None and not _percent_decodes_to_text(raw_path):
        return "path"
    # "+" is a space in a query and never part of an escape: it cannot break the decoding.
    if not _percent_decodes_to_text(scope.get("query_string", b"")):
        return "query"
    headers: Iterable[tuple[bytes, bytes]] = scope.get("headers", ())
    for name, value in headers:
        if not value.isascii() and name.lower() in TEXT_HEADERS and not _is_utf8(value):
            return name.decode("latin-1").lower()
    return None


class RequestGuard:
    """Pure ASGI, between the observability middleware (whose request id the log line
    carries) and Starlette's exception middleware."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        part = undecodable_part(scope)
        if part is not None:
            if kind == "websocket":
                # Before the handshake is accepted: the client is refused (HTTP 403).
                await send({"type": "websocket.close", "code": 1007, "reason": ""})
                return
            message = f"the request's {part} is not UTF-8 text"
            await error_response(400, "malformed_request", message)(scope, receive, send)
            return

        started = False

        async def send_watching(message: Message) -> None:
            nonlocal started
            if message["type"] in ("http.response.start", "websocket.accept"):
                started = True
            await send(message)

        try:
            await self.app(scope, receive, send_watching)
        except Exception:
            method = scope.get("method", "WEBSOCKET")
            log.exception("unhandled error on %s %s", method, route_template(scope))
            if started:
                # Nothing more can be said: the server ends the connection.
                return
            if kind == "websocket":
                await send({"type": "websocket.close", "code": 1011, "reason": ""})
                return
            await error_response(500, "internal_error", "internal error")(scope, receive, send)
