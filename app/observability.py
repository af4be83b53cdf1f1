"""The dials of a running process: Prometheus metrics, request ids, one JSON log line a request.

Metrics live in prometheus-client's default registry. One ``paycode serve --workers N`` runs
N processes behind one port, so ``paycode serve`` points PROMETHEUS_MULTIPROC_DIR at a fresh
directory and ``/metrics`` then sums every worker's files (prometheus-client multiprocess mode).
Separate instances (compose replicas, ``make cluster``) are scraped one by one, each on its
own address. See docs/OPERATIONS.md.

Code outside ``app/`` (the realtime hub) must not import this module; the app hands it the
plain callbacks of :data:`REALTIME_HOOKS` instead.
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import re
import threading
import time
from bisect import bisect_left
from collections.abc import Awaitable, Callable, Iterable, MutableMapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from random import getrandbits
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from app import guard
from app.guard import route_template
from app.webhooks import supervisor
from realtime.protocol import commit_time

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# --- metrics ----------------------------------------------------------------------------------

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

HTTP_REQUESTS = Counter(
    "paycode_http_requests",
    "HTTP requests answered, by route template and status.",
    ["method", "route", "status"],
)
HTTP_LATENCY = Histogram(
    "paycode_http_request_duration_seconds",
    "Time from the request's arrival to the end of its response body.",
    ["method", "route"],
    buckets=LATENCY_BUCKETS,
)
PAYMENTS = Counter("paycode_payments", "Payments committed, by how they were made.", ["kind"])
REFUNDS = Counter("paycode_refunds", "Refunds committed.")
WEBSOCKETS_OPEN = Gauge(
    "paycode_websockets_open",
    "WebSockets open now (handshake done, not yet closed).",
    multiprocess_mode="livesum",
)
PUSH_LATENCY = Histogram(
    "paycode_push_latency_seconds",
    "Time from an event's commit to its frame being written to a socket.",
    buckets=(0.0005, *LATENCY_BUCKETS),
)
BROKER_RECONNECTS = Counter(
    "paycode_broker_reconnects", "Times the broker connection was lost and made again."
)
RELAY_LAG = Gauge(
    "paycode_outbox_relay_lag_seconds",
    "Seconds since the outbox relay last finished a pass; about its interval when healthy, "
    "growing while the database is unreachable.",
    multiprocess_mode="livemax",
)

WEBHOOK_DELIVERIES = Counter(
    "paycode_webhook_deliveries",
    "Webhook deliveries settled, by outcome (succeeded, or failed once every retry was spent).",
    ["outcome"],
)
WEBHOOK_ATTEMPTS = Counter(
    "paycode_webhook_attempts",
    "Webhook delivery attempts, by outcome (succeeded, http_error, redirect, timeout, "
    "connection_error, refused_address).",
    ["outcome"],
)
_WEBHOOK_ATTEMPTS_BY_OUTCOME: dict[str, Any] = {}
WEBHOOK_ATTEMPT_SECONDS = Histogram(
    "paycode_webhook_attempt_duration_seconds",
    "Time from opening an attempt to the receiver's answer or the attempt's failure.",
    buckets=LATENCY_BUCKETS,
)
WEBHOOK_OLDEST_PENDING = Gauge(
    "paycode_webhook_oldest_pending_seconds",
    "Age of the oldest webhook delivery still owed to an enabled endpoint (0 when none).",
    multiprocess_mode="livemax",
)
WEBHOOK_IN_FLIGHT = Gauge(
    "paycode_webhook_attempts_in_flight",
    "Webhook attempts waiting for their receiver's answer now.",
    multiprocess_mode="livesum",
)
PURGED_ROWS = Counter(
    "paycode_purged_rows",
    "Rows removed by the purge after their window passed, by table.",
    ["table"],
)
IDEMPOTENCY_OLDEST_AGE = Gauge(
    "paycode_idempotency_oldest_record_age_seconds",
    "Age of the oldest stored Idempotency-Key response at the last purge pass; about 24 h "
    "(plus the purge interval) when the purge keeps up.",
    multiprocess_mode="livemax",
)


# The labelled children by kind, made at first use: ``labels()`` validates and locks on every
# call.
_payment_kinds: dict[str, Any] = {}


def record_payment(kind: str) -> None:
    """One committed payment; ``kind`` is static, dynamic or direct."""
    if kind not in ("static", "dynamic", "direct"):
        kind = "other"
    child = _payment_kinds.get(kind)
    if child is None:
        child = _payment_kinds[kind] = PAYMENTS.labels(kind=kind)
    child.inc()


def record_refund() -> None:
    REFUNDS.inc()


def record_committed(events: Iterable[Any]) -> None:
    """Count payments and refunds from one unit of work's committed events.

    Each payment writes ``payment.succeeded`` to payer, payee and agent, so a payment is counted
    once per distinct id in the batch; a refund once per distinct (payment, refunded amount)."""
    payments: dict[str, str] = {}
    refunds: set[tuple[str, Any]] = set()
    for item in events:
        event = getattr(item, "event", item)
        data = event.get("data") or {}
        if not isinstance(data, dict) or "id" not in data:
            continue
        if event.get("type") == "payment.succeeded":
            payments[str(data["id"])] = str(data.get("code_kind") or "direct")
        elif event.get("type") == "payment.refunded":
            refunds.add((str(data["id"]), data.get("refunded_amount")))
    for kind in payments.values():
        record_payment(kind)
    for _ in refunds:
        record_refund()


def record_purge(removed: dict[str, int] | None, oldest_idempotency_age: float) -> None:
    """One purge pass: rows removed by table (None when another process purged instead)."""
    for table, count in (removed or {}).items():
        if count:
            PURGED_ROWS.labels(table=table).inc(count)
    IDEMPOTENCY_OLDEST_AGE.set(oldest_idempotency_age)


def websocket_opened() -> None:
    WEBSOCKETS_OPEN.inc()


def websocket_closed() -> None:
    WEBSOCKETS_OPEN.dec()


class PendingObservations:
    """Observations of one unlabelled histogram counted here and added to it in one go.

    Every frame of every socket is observed (nine a payment on the 100-shop floor): one by one,
    each cost the histogram two value updates, each a lock and, with several workers, a pid
    check and a write to its mmap file: 3.5 us a frame in one process, 6.2 us with workers,
    against 1.5 and 1.7 us here (docs/BENCHMARKS.md). Here an observation is a list
    increment; ``flush`` adds the counts at most ``every``
    seconds after the first of them, before this process renders /metrics, and on the relay's
    tick, so another worker's scrape sees them within half a second even when pushes stop.
    The histogram's per-bucket values are prometheus-client's own (``_buckets``, ``_sum``:
    it offers no bulk observe); tests/integration/test_ops.py reads them back through
    /metrics, so a release that renames them fails there rather than losing counts."""

    def __init__(self, histogram: Histogram, every: float = 0.25) -> None:
        self._histogram = histogram
        self._bounds: list[float] = list(histogram._upper_bounds)
        self._counts = [0] * len(self._bounds)
        self._sum = 0.0
        self._every = every
        self._first_pending: float | None = None
        # /metrics renders in a worker thread while the loop observes.
        self._lock = threading.Lock()

    def observe(self, amount: float) -> None:
        with self._lock:
            # The first bound >= amount, as Histogram.observe; the last bound is +Inf.
            self._counts[bisect_left(self._bounds, amount)] += 1
            self._sum += amount
            now = time.monotonic()
            if self._first_pending is None:
                self._first_pending = now
            elif now - self._first_pending >= self._every:
                self._flush_locked()

    def flush(self) -> None:
        with self._lock:
            self._flush_locked()

    def _flush_locked(self) -> None:
        if self._first_pending is None:
            return
        for value, count in zip(self._histogram._buckets, self._counts, strict=True):
            if count:
                value.inc(count)
        self._histogram._sum.inc(self._sum)
        self._counts = [0] * len(self._bounds)
        self._sum = 0.0
        self._first_pending = None


_pending_pushes = PendingObservations(PUSH_LATENCY)


def frame_pushed(committed_at: datetime | str | float | None) -> None:
    """A live event's frame was written to a socket; ``committed_at`` is the event's
    ``created_at`` (datetime, RFC 3339 text or epoch seconds; the hub passes the epoch seconds
    it read once for every socket). Replayed frames are not pushes: call this for live frames
    only, or the histogram measures the client's absence."""
    if type(committed_at) is not float:
        committed_at = commit_time(committed_at)
        if committed_at is None:
            return
    _pending_pushes.observe(max(0.0, time.time() - committed_at))


def broker_reconnected() -> None:
    BROKER_RECONNECTS.inc()


def set_relay_lag(seconds: float) -> None:
    RELAY_LAG.set(max(0.0, seconds))
    # The relay's tick is every process's heartbeat, pushes or not.
    _pending_pushes.flush()


def record_webhook_attempt(outcome: str, seconds: float) -> None:
    # The labelled child looked up once per outcome: every payment's deliveries pass here.
    child = _WEBHOOK_ATTEMPTS_BY_OUTCOME.get(outcome)
    if child is None:
        child = _WEBHOOK_ATTEMPTS_BY_OUTCOME[outcome] = WEBHOOK_ATTEMPTS.labels(outcome=outcome)
    child.inc()
    WEBHOOK_ATTEMPT_SECONDS.observe(max(0.0, seconds))


def record_webhook_delivery(outcome: str, count: int = 1) -> None:
    WEBHOOK_DELIVERIES.labels(outcome=outcome).inc(count)


def set_webhook_oldest_pending(seconds: float) -> None:
    WEBHOOK_OLDEST_PENDING.set(max(0.0, seconds))


def set_webhook_in_flight(count: int) -> None:
    WEBHOOK_IN_FLIGHT.set(count)


# Plain callables for code that may not import app/ (realtime/): the app passes these in.
# The open-socket gauge needs no hook: the middleware sees every accept and every end.
REALTIME_HOOKS: dict[str, Callable[..., None]] = {
    "frame_pushed": frame_pushed,
    "broker_reconnected": broker_reconnected,
    "relay_lag": set_relay_lag,
}


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_ENV) or None


def prepare_multiprocess_dir(workers: int, base: str | None = None) -> str | None:
    """Before uvicorn starts N workers: give them one metrics directory to share. Returns the
    directory if it made one (the caller removes it at exit), else None.

    An operator's own PROMETHEUS_MULTIPROC_DIR is kept but emptied of a previous run's files;
    a single process needs none and scrapes its own memory."""
    existing = multiprocess_dir()
    if existing is not None:
        path = Path(existing)
        path.mkdir(parents=True, exist_ok=True)
        for stale in path.glob("*.db"):
            stale.unlink(missing_ok=True)
        return None
    if workers <= 1:
        return None
    import tempfile

    created = tempfile.mkdtemp(prefix="paycode-metrics-", dir=base)
    os.environ[MULTIPROC_ENV] = created
    return created


def forget_dead_workers() -> None:
    """Drop the live gauges of workers that died without a clean exit (SIGKILL), so the open
    WebSocket count does not keep a dead process's sockets."""
    directory = multiprocess_dir()
    if directory is None:
        return
    from prometheus_client import multiprocess

    for path in Path(directory).glob("gauge_live*_*.db"):
        pid_text = path.stem.rsplit("_", 1)[-1]
        if pid_text.isdigit() and not _alive(int(pid_text)):
            multiprocess.mark_process_dead(int(pid_text), directory)


def process_exiting() -> None:
    directory = multiprocess_dir()
    if directory is not None:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(os.getpid(), directory)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def metrics_text() -> tuple[bytes, str]:
    """The Prometheus exposition of this process, or of all workers in multiprocess mode;
    blocking (it may ask the webhook sender process for its part)."""
    _pending_pushes.flush()
    directory = multiprocess_dir()
    if directory is None:
        own = generate_latest(REGISTRY)
        if os.environ.get(supervisor.SENDER_METRICS_ENV):
            own = supervisor.with_sender_families(own, supervisor.sender_metrics())
        return own, CONTENT_TYPE_LATEST
    from prometheus_client import multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=directory)
    return generate_latest(registry), CONTENT_TYPE_LATEST


# --- request ids and logs ---------------------------------------------------------------------

REQUEST_ID_HEADER = "x-request-id"
_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "paycode_request_id", default=None
)
access_log = logging.getLogger("paycode.access")


def request_id_from(headers: Iterable[tuple[bytes, bytes]]) -> str:
    """The caller's X-Request-ID when it is a plain token, else a fresh one: a header that
    could smuggle log lines or unbounded text is replaced, not echoed."""
    for name, value in headers:
        if name.lower() == b"x-request-id":
            return _request_id(value)
    return _fresh_request_id()


def _request_id(value: bytes | None) -> str:
    if value is not None:
        try:
            text = value.decode("ascii")
        except UnicodeDecodeError:
            pass
        else:
            if _SANE_REQUEST_ID.fullmatch(text):
                return text
    return _fresh_request_id()


def _fresh_request_id() -> str:
    # 32 hex digits, like a uuid4's: unique, with no need to be unguessable (a client may
    # choose its own). Not uuid4, whose read of the OS's randomness lets go of the GIL on the
    # event loop for every request.
    return f"{getrandbits(128):032x}"


# The labelled children by (method, route, status): ``labels()`` validates and locks on every
# call. Bounded, because the method comes from the client; past the bound, ``labels()`` as usual.
_CHILDREN_LIMIT = 1024
_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}


def _request_metrics(method: str, route: str, status: int) -> tuple[Any, Any]:
    key = (method, route, status)
    found = _children.get(key)
    if found is not None:
        return found
    found = (
        HTTP_REQUESTS.labels(method=method, route=route, status=str(status)),
        HTTP_LATENCY.labels(method=method, route=route),
    )
    if len(_children) < _CHILDREN_LIMIT:
        _children[key] = found
    return found


def _response_headers(
    headers: Iterable[tuple[bytes, bytes]],
    id_header: tuple[bytes, bytes],
    extra: Sequence[tuple[bytes, bytes]],
) -> list[tuple[bytes, bytes]]:
    """The app's headers without any X-Request-ID of its own, then each extra header the app
    did not set, then the request's id."""
    out = []
    present = set()
    for pair in headers:
        name = pair[0].lower()
        if name != b"x-request-id":
            out.append(pair)
            present.add(name)
    for pair in extra:
        if pair[0] not in present:
            out.append(pair)
    out.append(id_header)
    return out


# Headers for every HTTP response, by the request's Host (None without one).
ExtraHeaders = Callable[[str | None], Sequence[tuple[bytes, bytes]]]

# Scope key of a WebSocket's server send (see ObservabilityMiddleware._websocket).
SERVER_SEND = "paycode.server_send"


class ObservabilityMiddleware:
    """Pure ASGI, the app's one middleware: ids, metrics and the access log line for HTTP; for
    WebSockets an id and the open-socket gauge (accepted until the handler returns), frames
    otherwise untouched.

    ``extra_headers(host)`` names headers every HTTP response carries unless the app set them
    (the security headers): added in the same ``send`` wrapper as the request id, rather
    than by a middleware and a wrapper of their own around every request.

    With ``guard`` it also does ``app.guard``'s work inside the request id's context: a
    request whose path, query or text headers are not Unicode text is refused before
    routing, and an exception no handler knows is logged once and answered 500 (a WebSocket
    closed 1011) instead of reaching the server. One layer and one ``send`` wrapper do what
    three middlewares did."""

    def __init__(
        self, app: ASGIApp, extra_headers: ExtraHeaders | None = None, *, guard: bool = False
    ) -> None:
        self.app = app
        self.extra_headers = extra_headers
        self.guard = guard

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "websocket":
            await self._websocket(scope, receive, send)
            return
        if kind != "http":
            await self.app(scope, receive, send)
            return

        # One pass over the request's headers for both the id and the Host.
        given_id = host = None
        for name, value in scope.get("headers", ()):
            name = name.lower()
            if name == b"host" and host is None:
                host = value
            elif name == b"x-request-id" and given_id is None:
                given_id = value
        request_id = _request_id(given_id)
        token = request_id_var.set(request_id)
        started = time.perf_counter()
        status = 500
        responded = False
        id_header = (b"x-request-id", request_id.encode("ascii"))
        extra = (
            ()
            if self.extra_headers is None
            else self.extra_headers(None if host is None else host.decode("latin-1"))
        )

        async def send_with_headers(message: Message) -> None:
            nonlocal status, responded
            if message["type"] == "http.response.start":
                responded = True
                status = int(message["status"])
                message["headers"] = _response_headers(message.get("headers", ()), id_header, extra)
            await send(message)

        refused_route = None
        try:
            part = guard.undecodable_part(scope) if self.guard else None
            if part is not None:
                await guard.refuse_undecodable(part, scope, receive, send_with_headers)
            elif self.guard and (refused_route := guard.refused_by_the_gate(scope)):
                await guard.answer_busy(send_with_headers)
            elif self.guard:
                try:
                    await self.app(scope, receive, send_with_headers)
                except Exception:
                    guard.log_unhandled(scope)
                    # Once the response has started nothing more can be said: the server
                    # ends the connection.
                    if not responded:
                        await guard.answer_unhandled(scope, receive, send_with_headers)
            else:
                await self.app(scope, receive, send_with_headers)
        except BaseException:
            status = 500
            raise
        finally:
            elapsed = time.perf_counter() - started
            method = str(scope.get("method", ""))
            route = refused_route or route_template(scope)
            count, latency = _request_metrics(method, route, status)
            count.inc()
            latency.observe(elapsed)
            if access_log.isEnabledFor(logging.INFO):
                access_log.info(
                    "request",
                    extra={
                        "request_id": request_id,
                        "method": method,
                        "route": route,
                        "status": status,
                        "duration_ms": round(elapsed * 1000, 2),
                    },
                )
            request_id_var.reset(token)

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        token = request_id_var.set(request_id_from(scope.get("headers", [])))
        accepted = False
        # The server's own send, for an endpoint to write frames with once it has accepted:
        # the wrappers between here and the endpoint (this one, Starlette's exception
        # handling, the WebSocket's state checks) only concern the handshake and the close.
        scope[SERVER_SEND] = send

        async def send_counting(message: Message) -> None:
            nonlocal accepted
            if not accepted and message["type"] == "websocket.accept":
                accepted = True
                websocket_opened()
            await send(message)

        try:
            part = guard.undecodable_part(scope) if self.guard else None
            if part is not None:
                await guard.refuse_undecodable(part, scope, receive, send)
            elif self.guard:
                try:
                    await self.app(scope, receive, send_counting)
                except Exception:
                    guard.log_unhandled(scope)
                    if not accepted:
                        await guard.answer_unhandled(scope, receive, send)
            else:
                await self.app(scope, receive, send_counting)
        finally:
            if accepted:
                websocket_closed()
            request_id_var.reset(token)


# Whatever a message carries, these never reach a log file in the clear.
_SCRUBBERS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"(?i)\b(bearer\s+)[^\s\"',;]+"), r"\1***"),
    (
        re.compile(
            r"(?i)(\"?\b(?:password|passwd|token|authorization|secret|admin_token)\b\"?"
            r"\s*[:=]\s*\"?)[^\s\"',;}]+"
        ),
        r"\1***",
    ),
    (re.compile(r"(?i)(://[^:/@\s]+:)[^@/\s]+@"), r"\1***@"),
    (re.compile(r"(/c/|/scan/)([A-Za-z0-9_-]{0,4})[A-Za-z0-9_-]*"), r"\1\2***"),
    (re.compile(r"\b([0-9A-Za-z]{4})-[0-9A-Za-z]{4}-[0-9A-Za-z]{2}\b"), r"\1-****-**"),
    # Webhook signing secrets (spec §11).
    (re.compile(r"\bwhsec_[A-Za-z0-9+/=]+"), "whsec_***"),
]


def _any_of(patterns: list[re.Pattern[str]]) -> re.Pattern[str]:
    alternatives = []
    for pattern in patterns:
        source = pattern.pattern.removeprefix("(?i)")
        flags = "i" if pattern.flags & re.IGNORECASE else ""
        alternatives.append(f"(?{flags}:{source})")
    return re.compile("|".join(alternatives))


# Whether any scrubber matches, in one search: most text (every access line) has nothing to
# mask and is returned as it is, rather than run through each substitution in turn. Text with
# no match for any pattern is left unchanged by all of them, so the result is the same.
_ANY_SECRET = _any_of([pattern for pattern, _ in _SCRUBBERS])


def scrub(text: str) -> str:
    if _ANY_SECRET.search(text) is None:
        return text
    for pattern, replacement in _SCRUBBERS:
        text = pattern.sub(replacement, text)
    return text


# uvicorn adds color_message, an ANSI-coloured copy of the message.
_RESERVED = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message",
    "asctime",
    "color_message",
}


# json.dumps builds an encoder on every call that asks for anything but the defaults.
_log_json = json.JSONEncoder(default=str, ensure_ascii=False).encode


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message, request id, and any extras."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": scrub(record.getMessage()),
        }
        request_id = request_id_var.get()
        if request_id is not None:
            line["request_id"] = request_id
        for key, value in record.__dict__.items():
            if key not in _RESERVED and not key.startswith("_"):
                line[key] = scrub(value) if isinstance(value, str) else value
        if record.exc_info:
            line["exception"] = scrub(self.formatException(record.exc_info))
        return _log_json(line)


def log_config(level: str = "info") -> dict[str, Any]:
    """uvicorn's ``log_config``: JSON lines on stderr; uvicorn's own access log is off because
    its lines carry raw paths (tokens in /c/{token}) and the middleware logs each request."""
    level = level.upper()
    handler = {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": "app.observability.JsonFormatter"}},
        "handlers": {"stderr": handler},
        "loggers": {
            "uvicorn": {"handlers": ["stderr"], "level": level, "propagate": False},
            "uvicorn.error": {"level": level},
            "uvicorn.access": {"handlers": [], "level": "WARNING", "propagate": False},
            "paycode": {"handlers": ["stderr"], "level": level, "propagate": False},
        },
        "root": {"handlers": ["stderr"], "level": "WARNING"},
    }
