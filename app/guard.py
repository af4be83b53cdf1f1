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

The checks and answers are here; ``app.observability.ObservabilityMiddleware`` (``guard=True``)
runs them in the same pure-ASGI layer that sets the request id, the metrics and the security
headers, so a request passes one middleware of the app's, not two.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from urllib.parse import unquote_to_bytes

from starlette.routing import Mount
from starlette.types import Receive, Scope, Send

from app.admission import refusal
from app.errors import domain_error_response, error_response

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


UNMATCHED = "unmatched"


def route_template(scope: Scope) -> str:
    """The matched route's template ("/api/v1/codes/{code_id}"), never the raw path: bounded
    label values for Prometheus, and no tokens or short codes in logs."""
    route = scope.get("route")
    if route is None:
        return UNMATCHED
    root = str(scope.get("root_path", ""))
    app_root = str(scope.get("app_root_path", ""))
    prefix = root[len(app_root) :] if root.startswith(app_root) else root
    if isinstance(route, Mount):
        return f"{prefix}/{{path}}"
    return f"{prefix}{getattr(route, 'path', '')}" or UNMATCHED


def log_unhandled(scope: Scope) -> None:
    """The one log line of an exception no handler knows, with its traceback (call it in the
    ``except`` block); the request id is the caller's context's."""
    method = scope.get("method", "WEBSOCKET")
    log.exception("unhandled error on %s %s", method, route_template(scope))


async def refuse_undecodable(part: str, scope: Scope, receive: Receive, send: Send) -> None:
    """Answer a request whose ``part`` is not Unicode text: 400, or a WebSocket refused before
    its handshake is accepted (HTTP 403)."""
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1007, "reason": ""})
        return
    message = f"the request's {part} is not UTF-8 text"
    await error_response(400, "malformed_request", message)(scope, receive, send)


async def answer_unhandled(scope: Scope, receive: Receive, send: Send) -> None:
    """What the client gets for an exception no handler knows, when nothing has been sent:
    500 internal_error, or the WebSocket closed 1011."""
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1011, "reason": ""})
        return
    await error_response(500, "internal_error", "internal error")(scope, receive, send)


# The routes whose writes pass the admission gate (app.admission), as the guard sees them.
GATED_PATHS = frozenset(("/api/v1/payments", "/api/v1/codes"))
# Built once by the same handler that answers the gate's refusal in the route.
_BUSY = domain_error_response(refusal())


def refused_by_the_gate(scope: Scope) -> str | None:
    """The gated route a request is for, when the admission gate would refuse it at once;
    None otherwise. Asked before routing, so that a refusal under overload skips the router,
    the body, the exception and its handler: the same 503 at a fraction of the CPU."""
    if scope.get("method") != "POST":
        return None
    path = scope.get("path")
    if path not in GATED_PATHS:
        return None
    state = getattr(scope["app"].state, "paycode", None)
    if state is None or not state.admission.refuses_now():
        return None
    return str(path)


async def answer_busy(send: Send) -> None:
    """503 unavailable with Retry-After, the body and headers of the gate's own refusal."""
    await send(
        {
            "type": "http.response.start",
            "status": _BUSY.status_code,
            "headers": list(_BUSY.raw_headers),
        }
    )
    await send({"type": "http.response.body", "body": _BUSY.body})
