"""The WebSocket protocol of spec §8: subprotocols, frames and close codes.

An event is serialized at most once per wire format, however many sockets receive it: the hub
wraps it in one `EventFrame` whose encodings are cached and handed, as the same object, to
every socket.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import msgpack
from pydantic_core import from_json, to_json

MSGPACK = "paycode.v1.msgpack"
JSON = "paycode.v1.json"
SUBPROTOCOLS = (MSGPACK, JSON)

MAX_FRAME = 64 * 1024
# The largest seq the event table can hold (a 32-bit INTEGER column).
MAX_SEQ = 2**31 - 1

CLOSE_NORMAL = 1000
CLOSE_INVALID_DATA = 1007
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009
CLOSE_RESTART = 1012
CLOSE_TRY_AGAIN = 1013
CLOSE_UNAUTHORIZED = 4401
CLOSE_HELLO_TIMEOUT = 4408

Wire = str | bytes


class ProtocolError(Exception):
    """A frame the server cannot accept; `close_code` says how the socket is closed."""

    def __init__(self, close_code: int, reason: str) -> None:
        super().__init__(reason)
        self.close_code = close_code
        self.reason = reason


def negotiate(offered: list[str]) -> str:
    """The subprotocol to speak: the client's first supported choice, else JSON (the default
    when none is asked). Returns the name; whether to echo it is `echoed`'s business."""
    for name in offered:
        if name in SUBPROTOCOLS:
            return name
    return JSON


def encode(fmt: str, frame: dict[str, Any]) -> Wire:
    """A frame in the wire format: msgpack bytes, or compact JSON text with non-ASCII
    characters as they are (pydantic-core's compiled encoder: the same text as
    ``json.dumps(frame, separators=(",", ":"), ensure_ascii=False)``, at a fraction of the CPU)."""
    if fmt == MSGPACK:
        return msgpack.packb(frame, use_bin_type=True)  # type: ignore[no-any-return]
    return to_json(frame).decode()


def decode(fmt: str, message: Wire) -> dict[str, Any]:
    """One client frame as a map with a string `type`, or ProtocolError (1007 unreadable data,
    1008 a frame of the wrong kind or shape, 1009 larger than 64 KiB)."""
    if len(message) > MAX_FRAME:
        raise ProtocolError(CLOSE_TOO_BIG, "frame larger than 64 KiB")
    if fmt == MSGPACK:
        if not isinstance(message, bytes):
            raise ProtocolError(CLOSE_POLICY, "text frame on the msgpack subprotocol")
        try:
            frame = msgpack.unpackb(message, raw=False, strict_map_key=True)
        except Exception as exc:
            raise ProtocolError(CLOSE_INVALID_DATA, "frame is not valid msgpack") from exc
    else:
        if not isinstance(message, str):
            raise ProtocolError(CLOSE_POLICY, "binary frame on the JSON subprotocol")
        try:
            # Strict: a \\u escape of a lone surrogate is not text either (1007, as for
            # invalid UTF-8), and NaN is not JSON.
            frame = from_json(message, allow_inf_nan=False, cache_strings="keys")
        except (ValueError, TypeError) as exc:
            # TypeError: a str holding a lone surrogate itself (no socket delivers one; the
            # text of a frame has been strictly UTF-8 decoded), refused all the same.
            raise ProtocolError(CLOSE_INVALID_DATA, "frame is not valid JSON") from exc
    if not isinstance(frame, dict) or not isinstance(frame.get("type"), str):
        raise ProtocolError(CLOSE_POLICY, "a frame must be a map with a string type")
    return frame


@dataclass(frozen=True, slots=True)
class Hello:
    token: str
    after: int | None


def parse_hello(frame: dict[str, Any]) -> Hello:
    """The hello's fields. A missing or non-string token is left to authentication (4401);
    an `after` that is neither null nor a non-negative integer is a policy violation."""
    token = frame.get("token")
    after = frame.get("after")
    if after is not None and (
        isinstance(after, bool) or not isinstance(after, int) or not 0 <= after <= MAX_SEQ
    ):
        raise ProtocolError(CLOSE_POLICY, "after must be null or an integer from 0 to 2^31-1")
    return Hello(token if isinstance(token, str) else "", after)


def welcome(account: dict[str, Any], device_id: str, last_seq: int) -> dict[str, Any]:
    return {"type": "welcome", "account": account, "device_id": device_id, "last_seq": last_seq}


def error(code: str, message: str) -> dict[str, Any]:
    return {"type": "error", "code": code, "message": message}


PONG: dict[str, Any] = {"type": "pong"}


def commit_time(created_at: Any) -> float | None:
    """An event's `created_at` (RFC 3339 text, a datetime or epoch seconds) as epoch seconds,
    or None when it is missing or unreadable."""
    if isinstance(created_at, str):
        try:
            created_at = datetime.fromisoformat(created_at)
        except ValueError:
            return None
    if isinstance(created_at, datetime):
        if created_at.tzinfo is None:
            created_at = created_at.replace(tzinfo=UTC)
        return created_at.timestamp()
    if isinstance(created_at, int | float) and not isinstance(created_at, bool):
        return float(created_at)
    return None


_UNREAD = -1.0


class EventBody:
    """What frames of equal events can share: the event's own encodings and its commit time.
    Every party of one payment gets the same event under its own `seq`."""

    __slots__ = ("committed", "encoded", "event")

    def __init__(self, event: dict[str, Any]) -> None:
        self.event = event
        self.encoded: dict[str, Wire] = {}
        self.committed: float | None = _UNREAD


# A frame is the map {"type": "event", "seq": seq, "event": event}: its encoding is these
# bytes around the encoding of `seq` and of the event, in the order json and msgpack write it.
_MSGPACK_HEAD = b"\x83" + msgpack.packb("type") + msgpack.packb("event") + msgpack.packb("seq")
_MSGPACK_EVENT = msgpack.packb("event")


@dataclass(slots=True)
class EventFrame:
    """One event as every socket of its account receives it, encoded lazily once per format,
    its commit time read once for every socket's push latency. Frames made with the same
    `EventBody` encode the event and read its time once between them."""

    seq: int
    event: dict[str, Any]
    _wire: dict[str, Wire] = field(default_factory=dict)
    body: EventBody | None = field(default=None, repr=False, compare=False)

    def wire(self, fmt: str) -> Wire:
        cached = self._wire.get(fmt)
        if cached is None:
            body = self._body()
            event = body.encoded.get(fmt)
            if event is None:
                event = body.encoded[fmt] = encode(fmt, self.event)
            if fmt == MSGPACK:
                cached = _MSGPACK_HEAD + msgpack.packb(self.seq) + _MSGPACK_EVENT + event  # type: ignore[operator]
            else:
                cached = f'{{"type":"event","seq":{int(self.seq)},"event":{event}}}'
            self._wire[fmt] = cached
        return cached

    @property
    def committed(self) -> float | None:
        """The event's `created_at` in epoch seconds, None if it has none that reads."""
        body = self._body()
        committed = body.committed
        if committed == _UNREAD:
            committed = body.committed = commit_time(self.event.get("created_at"))
        return committed

    def _body(self) -> EventBody:
        body = self.body
        if body is None:
            body = self.body = EventBody(self.event)
        return body
