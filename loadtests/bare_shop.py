"""The machine's ceiling for one sale: what Starlette + uvicorn + the wire protocol cost for
one sale, with no product logic.

It speaks just enough of paycode's public API (spec §3–§8) for the unchanged
``loadtests/shop.py`` and ``loadtests/sales.py`` to run against it: sign-up, login, admin
deposit, agency (payee names the agent), dynamic or static code, payment by code, and the
WebSocket with hello / welcome / event frames and a per-account ``seq``. A sale therefore makes
this server do the framework work paycode's sale needs at all: 2 HTTP requests with JSON
bodies and bearer tokens, and the spec's events as JSON text frames, each encoded once and
written to every socket of its account (``payment.succeeded`` to payer, payee and agent,
``code.paid`` to agent and payee: 8 frames on the bench's 4 devices).

Everything else is left out on purpose, so that the rate is a ceiling and not a competitor:
state lives in in-memory dicts of one process (no database, no transaction, no outbox, so no
replay on reconnect), passwords are compared as given (no Argon2), receipts are not signed
(``receipt`` is null), codes get no ``short_code``, the ``Idempotency-Key`` is checked but not
stored, and there is no rate limiting, metrics middleware or broker. Bad input still gets a
4xx, but only for the fields these routes read. Never serve it to anyone: it is a benchmark
fixture.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import os
import re
import secrets
import uuid
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

SUBPROTOCOL = "paycode.v1.json"
CURRENCY = "CNY"
MAX_AMOUNT = 10**12
HANDLE = re.compile(r"[a-z0-9_.-]{3,32}")
PRINTABLE_KEY = re.compile(r"[\x21-\x7e][\x20-\x7e]{0,254}")
ADMIN_TOKEN = os.environ.get("PAYCODE_ADMIN_TOKEN", "")
HELLO_TIMEOUT = 10.0
DYNAMIC_TTL = timedelta(seconds=900)


def stamp(moment: datetime) -> str:
    return moment.replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def encode(frame: dict[str, Any]) -> str:
    # The encoding paycode's hub uses for JSON frames.
    return json.dumps(frame, separators=(",", ":"), ensure_ascii=False)


def new_id() -> str:
    return uuid.uuid4().hex


class Refused(Exception):
    def __init__(self, status: int, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.field = status, code, field


@dataclass(eq=False, slots=True)
class Socket:
    """One welcomed WebSocket; `pending` keeps frames in seq order while one writer drains it."""

    ws: WebSocket
    pending: deque[str] = field(default_factory=deque)
    writing: bool = False


@dataclass(eq=False, slots=True)
class Account:
    id: str
    handle: str
    display_name: str
    password: str
    created_at: str
    balance: int = 0
    seq: int = 0
    sockets: list[Socket] = field(default_factory=list)

    def party(self) -> dict[str, str]:
        return {"handle": self.handle, "display_name": self.display_name}

    def view(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "handle": self.handle,
            "display_name": self.display_name,
            "balance": self.balance,
            "currency": CURRENCY,
            "created_at": self.created_at,
        }


@dataclass(eq=False, slots=True)
class Agency:
    id: str
    payee: Account
    agent: Account


@dataclass(eq=False, slots=True)
class Code:
    agency: Agency
    view: dict[str, Any]


ACCOUNTS: dict[str, Account] = {}  # by handle
SESSIONS: dict[str, tuple[Account, str]] = {}  # token -> (account, device id)
AGENCIES: dict[str, Agency] = {}
CODES: dict[str, Code] = {}  # by token


def publish(account: Account, type_: str, data: dict[str, Any], at: str) -> None:
    """Number the event and queue its one encoding on every socket of the account; nothing
    yields between the two, so each socket's queue is in seq order."""
    account.seq += 1
    if account.sockets:
        event = {"type": type_, "created_at": at, "data": data}
        frame = encode({"type": "event", "seq": account.seq, "event": event})
        for sock in account.sockets:
            sock.pending.append(frame)


async def flush(accounts: list[Account]) -> None:
    for account in accounts:
        for sock in list(account.sockets):
            await drain(account, sock)


async def drain(account: Account, sock: Socket) -> None:
    # One writer per socket at a time: a second caller leaves its frames to the one writing.
    if sock.writing:
        return
    sock.writing = True
    try:
        while sock.pending:
            await sock.ws.send_text(sock.pending.popleft())
    except (WebSocketDisconnect, OSError, RuntimeError):
        if sock in account.sockets:
            account.sockets.remove(sock)
    finally:
        sock.writing = False


async def body_of(request: Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.body())
    except ValueError as exc:
        raise Refused(400, "malformed_json", "body is not valid JSON") from exc
    if not isinstance(body, dict):
        raise Refused(422, "validation_error", "body must be an object")
    return body


def text(body: dict[str, Any], name: str, low: int = 1, high: int = 200) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not low <= len(value) <= high:
        raise Refused(422, "validation_error", f"{name} must be {low}-{high} characters", name)
    return value


def whole(value: Any, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def caller(request: Request) -> tuple[Account, str]:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    found = SESSIONS.get(token) if scheme.lower() == "bearer" else None
    if found is None:
        raise Refused(401, "unauthorized", "missing or invalid token")
    return found


def named(body: dict[str, Any], name: str) -> Account:
    account = ACCOUNTS.get(text(body, name, 3, 32).lower())
    if account is None:
        raise Refused(404, "not_found", f"no account {body[name]!r}", name)
    return account


def refused(exc: Refused) -> JSONResponse:
    error = {"code": exc.code, "message": str(exc), "field": exc.field}
    return JSONResponse({"error": error}, status_code=exc.status)


async def create_account(request: Request) -> Response:
    try:
        body = await body_of(request)
        handle = text(body, "handle", 3, 32).lower()
        if not HANDLE.fullmatch(handle):
            raise Refused(422, "validation_error", "handle: 3-32 of [a-z0-9_.-]", "handle")
        password = text(body, "password", 8, 1024)
        display_name = text(body, "display_name", 1, 100)
        if handle in ACCOUNTS:
            raise Refused(409, "handle_taken", "handle is taken", "handle")
    except Refused as exc:
        return refused(exc)
    now = stamp(datetime.now(UTC))
    account = ACCOUNTS[handle] = Account(new_id(), handle, display_name, password, now)
    return JSONResponse(account.view(), status_code=201)


async def create_session(request: Request) -> Response:
    try:
        body = await body_of(request)
        account = ACCOUNTS.get(text(body, "handle", 1, 64).lower())
        password = text(body, "password", 1, 1024)
        device_name = text(body, "device_name", 1, 100)
        if account is None or not hmac.compare_digest(password, account.password):
            raise Refused(401, "invalid_credentials", "wrong handle or password")
    except Refused as exc:
        return refused(exc)
    token, device_id = secrets.token_urlsafe(32), new_id()
    SESSIONS[token] = (account, device_id)
    device = {"id": device_id, "name": device_name, "created_at": stamp(datetime.now(UTC))}
    return JSONResponse(
        {"token": token, "device": device, "account": account.view()}, status_code=201
    )


async def deposit(request: Request) -> Response:
    try:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not ADMIN_TOKEN or token != ADMIN_TOKEN:
            raise Refused(401, "unauthorized", "admin token required")
        body = await body_of(request)
        account = named(body, "handle")
        if not whole(body.get("amount"), 1, MAX_AMOUNT):
            raise Refused(422, "validation_error", "amount: an integer 1-10^12", "amount")
    except Refused as exc:
        return refused(exc)
    now = stamp(datetime.now(UTC))
    account.balance += body["amount"]
    view = {
        "id": new_id(),
        "handle": account.handle,
        "amount": body["amount"],
        "currency": CURRENCY,
        "created_at": now,
    }
    publish(account, "deposit.succeeded", view, now)
    await flush([account])
    return JSONResponse(view, status_code=201)


async def create_agency(request: Request) -> Response:
    """Only the payee's form (`{"agent": handle}`, active at once): the one the shop uses."""
    try:
        payee, _ = caller(request)
        body = await body_of(request)
        agent = named(body, "agent")
        label = body.get("label")
        if label is not None and not isinstance(label, str):
            raise Refused(422, "validation_error", "label must be a string", "label")
    except Refused as exc:
        return refused(exc)
    now = stamp(datetime.now(UTC))
    agency = Agency(new_id(), payee, agent)
    AGENCIES[agency.id] = agency
    view = {
        "id": agency.id,
        "payee": payee.party(),
        "agent": agent.party(),
        "status": "active",
        "label": label,
        "can_refund": False,
        "created_by": payee.party(),
        "created_at": now,
    }
    for account in sorted({payee, agent}, key=lambda a: a.id):
        publish(account, "agency.activated", view, now)
    await flush([payee, agent])
    return JSONResponse(view, status_code=201)


def priced(body: dict[str, Any]) -> tuple[int | None, list[dict[str, Any]]]:
    items = body.get("items") or []
    if not isinstance(items, list) or len(items) > 100:
        raise Refused(422, "validation_error", "items: a list of at most 100", "items")
    total = 0
    for item in items:
        if not (
            isinstance(item, dict)
            and isinstance(item.get("name"), str)
            and 1 <= len(item["name"]) <= 200
            and whole(item.get("quantity"), 1, 10**6)
            and whole(item.get("unit_amount"), 0, MAX_AMOUNT)
        ):
            raise Refused(422, "validation_error", "items: {name, quantity, unit_amount}", "items")
        total += item["quantity"] * item["unit_amount"]
    amount = body.get("amount")
    if amount is not None and not whole(amount, 1, MAX_AMOUNT):
        raise Refused(422, "validation_error", "amount: an integer 1-10^12", "amount")
    if items:
        if not 1 <= total <= MAX_AMOUNT:
            raise Refused(422, "validation_error", "items add up to 1-10^12", "items")
        if amount is not None and amount != total:
            raise Refused(422, "amount_mismatch", "amount differs from the items' sum", "amount")
        amount = total
    return amount, items


async def create_code(request: Request) -> Response:
    try:
        account, _ = caller(request)
        body = await body_of(request)
        agency = AGENCIES.get(str(body.get("agency_id")))
        if agency is None or account not in (agency.payee, agency.agent):
            raise Refused(404, "not_found", "no such agency", "agency_id")
        kind = body.get("kind")
        if kind not in ("dynamic", "static"):
            raise Refused(422, "validation_error", "kind: dynamic or static", "kind")
        amount, items = priced(body)
        if kind == "dynamic" and amount is None:
            raise Refused(422, "amount_required", "a dynamic code needs amount or items")
    except Refused as exc:
        return refused(exc)
    moment = datetime.now(UTC)
    token = secrets.token_urlsafe(16)
    view = {
        "id": new_id(),
        "kind": kind,
        "status": "active",
        "agency_id": agency.id,
        "agent": agency.agent.party(),
        "payee": agency.payee.party(),
        "label": body.get("label"),
        "amount": amount,
        "currency": CURRENCY,
        "items": items,
        "memo": body.get("memo"),
        "token": token,
        "short_code": None,
        "url": f"{request.base_url}c/{token}",
        "expires_at": stamp(moment + DYNAMIC_TTL) if kind == "dynamic" else None,
        "created_at": stamp(moment),
        "paid_payment_id": None,
    }
    CODES[token] = Code(agency, view)
    return JSONResponse(view, status_code=201)


async def pay(request: Request) -> Response:
    """Payment by code only (the direct form is not served)."""
    try:
        payer, _ = caller(request)
        key = request.headers.get("idempotency-key")
        if key is not None and not PRINTABLE_KEY.fullmatch(key):
            raise Refused(422, "validation_error", "Idempotency-Key: 1-255 printable ASCII")
        body = await body_of(request)
        code = CODES.get(text(body, "code", 1, 64))
        if code is None:
            raise Refused(404, "not_found", "no such code", "code")
        view, agency = code.view, code.agency
        if view["status"] != "active":
            raise Refused(409, "code_already_paid", "the code is paid")
        amount = view["amount"]
        given = body.get("amount")
        if given is not None and not whole(given, 1, MAX_AMOUNT):
            raise Refused(422, "validation_error", "amount: an integer 1-10^12", "amount")
        if amount is None:
            if given is None:
                raise Refused(422, "amount_required", "this code needs an amount", "amount")
            amount = given
        elif given is not None and given != amount:
            raise Refused(422, "amount_mismatch", "the code has its own amount", "amount")
        if payer is agency.payee:
            raise Refused(422, "self_payment", "the payee cannot pay itself")
        if payer.balance < amount:
            raise Refused(409, "insufficient_funds", "balance too low")
    except Refused as exc:
        return refused(exc)
    # The "commit": no await from here until every frame is queued.
    now = stamp(datetime.now(UTC))
    payer.balance -= amount
    agency.payee.balance += amount
    payment_id = new_id()
    dynamic = view["kind"] == "dynamic"
    if dynamic:
        view["status"], view["paid_payment_id"] = "paid", payment_id
    payment = {
        "id": payment_id,
        "status": "succeeded",
        "amount": amount,
        "refunded_amount": 0,
        "currency": CURRENCY,
        "payer": payer.party(),
        "payee": agency.payee.party(),
        "agent": agency.agent.party(),
        "code_id": view["id"],
        "code_kind": view["kind"],
        "code_label": view["label"],
        "items": view["items"],
        "memo": body.get("memo", view["memo"]),
        "created_at": now,
        "receipt": None,
    }
    involved = sorted({payer, agency.payee, agency.agent}, key=lambda a: a.id)
    for account in involved:
        publish(account, "payment.succeeded", payment, now)
    if dynamic:
        for account in sorted({agency.agent, agency.payee}, key=lambda a: a.id):
            publish(account, "code.paid", view, now)
    await flush(involved)
    return JSONResponse(payment, status_code=201)


async def healthz(_request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def live(websocket: WebSocket) -> None:
    """Spec §8, JSON frames only: hello within 10 s, welcome, then live events (no replay)."""
    offered = websocket.scope.get("subprotocols") or []
    await websocket.accept(subprotocol=SUBPROTOCOL if SUBPROTOCOL in offered else None)
    try:
        async with asyncio.timeout(HELLO_TIMEOUT):
            message = await websocket.receive_text()
    except TimeoutError:
        await websocket.close(4408)
        return
    except WebSocketDisconnect:
        return
    except KeyError:
        # receive_text on a binary frame: the wrong kind of frame for this subprotocol.
        await websocket.close(1008)
        return
    try:
        hello = json.loads(message)
    except ValueError:
        await websocket.close(1007)
        return
    if not isinstance(hello, dict) or hello.get("type") != "hello":
        await websocket.close(1008)
        return
    found = SESSIONS.get(str(hello.get("token")))
    if found is None:
        await websocket.close(4401)
        return
    account, device_id = found
    sock = Socket(websocket)
    welcome = {
        "type": "welcome",
        "account": account.view(),
        "device_id": device_id,
        "last_seq": account.seq,
    }
    sock.pending.append(encode(welcome))
    account.sockets.append(sock)
    await drain(account, sock)
    try:
        while True:
            frame = json.loads(await websocket.receive_text())
            kind = frame.get("type") if isinstance(frame, dict) else None
            reply = {"type": "pong"} if kind == "ping" else {"type": "error", "code": "unknown"}
            sock.pending.append(encode(reply))
            await drain(account, sock)
    except WebSocketDisconnect:
        return
    except (KeyError, ValueError):
        # A binary frame (KeyError from receive_text) or unreadable JSON.
        await websocket.close(1007)
    finally:
        if sock in account.sockets:
            account.sockets.remove(sock)


app = Starlette(
    routes=[
        Route("/healthz", healthz, methods=["GET"]),
        Route("/api/v1/accounts", create_account, methods=["POST"]),
        Route("/api/v1/sessions", create_session, methods=["POST"]),
        Route("/api/v1/admin/deposits", deposit, methods=["POST"]),
        Route("/api/v1/agencies", create_agency, methods=["POST"]),
        Route("/api/v1/codes", create_code, methods=["POST"]),
        Route("/api/v1/payments", pay, methods=["POST"]),
        WebSocketRoute("/api/v1/ws", live),
    ]
)
