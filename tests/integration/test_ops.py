"""Operations endpoints and dials (spec §9): /healthz, /readyz, /metrics, request ids, logs."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import WebSocketRoute
from starlette.testclient import TestClient
from starlette.websockets import WebSocket, WebSocketDisconnect

from app import observability
from app.main import create_app
from app.settings import Settings
from models.db import Database
from models.events import Published
from tests.api import PASSWORD, Api
from tests.cluster import RedisServer
from tests.conftest import ADMIN_TOKEN
from tests.services import PostgresFactory, free_port, unavailable


def metric(client: TestClient, name: str, **labels: str) -> float:
    """One sample of /metrics, read through prometheus-client's own parser (0 if absent)."""
    response = client.get("/metrics")
    assert response.status_code == 200
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


def test_metrics_parse_and_request_counters_move(client: TestClient, api: Api) -> None:
    """/metrics is Prometheus text; a request bumps its route's counter and latency histogram."""
    labels = {"method": "POST", "route": "/api/v1/accounts", "status": "201"}
    before = metric(client, "paycode_http_requests_total", **labels)
    hist_before = metric(
        client, "paycode_http_request_duration_seconds_count", method="POST", route=labels["route"]
    )
    api.sign_up()
    api.sign_up()
    assert metric(client, "paycode_http_requests_total", **labels) == before + 2
    assert (
        metric(
            client,
            "paycode_http_request_duration_seconds_count",
            method="POST",
            route=labels["route"],
        )
        == hist_before + 2
    )
    assert client.get("/metrics").headers["content-type"].startswith("text/plain")


def test_route_label_is_the_template_never_the_raw_path(client: TestClient, api: Api) -> None:
    """Labels carry route templates, so a handle or token in a path never becomes a label
    value, and unknown paths share one "unmatched" label instead of growing the series."""
    user = api.user()
    assert api.get(f"/accounts/{user.handle}", user).status_code == 200
    assert client.get("/no/such/path-0123456789").status_code == 404
    text = client.get("/metrics").text
    assert 'route="/api/v1/accounts/{handle}"' in text
    assert 'route="unmatched",status="404"' in text
    assert user.handle not in text
    assert "path-0123456789" not in text


def test_healthz_and_readyz_when_all_is_well(client: TestClient) -> None:
    """/healthz says the process is up; /readyz checks the database and the broker."""
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "checks": {"database": "ok", "broker": "ok"}}


def test_readyz_is_503_when_the_database_refuses_connections(client: TestClient) -> None:
    """A database host that refuses connections (its port closed) makes /readyz 503 with the
    error body and no connection details, while /healthz (the process itself) stays 200."""
    state = client.app.state.paycode  # type: ignore[attr-defined]
    working = state.db
    state.db = Database(f"postgresql://postgres:pw@127.0.0.1:{free_port()}/gone")
    try:
        assert client.get("/healthz").status_code == 200
        response = client.get("/readyz")
    finally:
        state.db.dispose()
        state.db = working
    assert response.status_code == 503
    body = response.json()
    assert body["error"]["code"] == "unavailable"
    assert body["checks"]["database"].startswith("unreachable")
    assert body["checks"]["broker"] == "ok"
    assert response.headers["retry-after"] == "1"
    assert "postgres" not in response.text
    assert client.get("/readyz").status_code == 200


def test_readyz_turns_503_when_the_database_is_dropped(pg_factory: PostgresFactory) -> None:
    """A PostgreSQL database dropped under a running app: /readyz goes from 200 to 503."""
    if not pg_factory.available():
        unavailable("PostgreSQL is not reachable on 127.0.0.1:5432")
    url = pg_factory.create()
    with TestClient(create_app(Settings(database_url=url), migrate_schema=False)) as client:
        assert client.get("/readyz").status_code == 200
        pg_factory.drop(url)
        response = client.get("/readyz")
        assert response.status_code == 503
        assert response.json()["checks"]["database"].startswith("unreachable")


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    server = RedisServer()
    if not server.available():
        unavailable("redis-server is not installed")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_readyz_follows_the_broker(database_url: str, own_redis: RedisServer) -> None:
    """/readyz is 503 while Redis is stopped and 200 again once it is back."""
    settings = Settings(database_url=database_url, broker_url=own_redis.url)
    with TestClient(create_app(settings, migrate_schema=False)) as client:
        assert client.get("/readyz").status_code == 200
        own_redis.stop()
        response = client.get("/readyz")
        assert response.status_code == 503
        assert response.json()["checks"]["broker"].startswith("unreachable")
        assert response.json()["checks"]["database"] == "ok"
        own_redis.start()
        assert client.get("/readyz").status_code == 200


def test_request_id_is_echoed_when_sane_and_replaced_when_not(client: TestClient) -> None:
    """A plain X-Request-ID comes back unchanged, on errors too; a missing or unsafe one is
    replaced by a fresh id, different on every request."""
    sane = "req-2024.01:abc_DEF"
    assert client.get("/healthz", headers={"X-Request-ID": sane}).headers["x-request-id"] == sane
    error = client.post("/api/v1/accounts", content=b"{", headers={"X-Request-ID": sane})
    assert error.status_code == 400
    assert error.headers["x-request-id"] == sane
    for bad in ("has space", "x" * 129, "semi;colon", '"quoted"'):
        echoed = client.get("/healthz", headers={"X-Request-ID": bad}).headers["x-request-id"]
        assert echoed != bad
        assert re.fullmatch(r"[0-9a-f]{32}", echoed)
    first = client.get("/healthz").headers["x-request-id"]
    second = client.get("/healthz").headers["x-request-id"]
    assert first != second


def test_logs_never_carry_tokens_or_passwords(
    client: TestClient, api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    """Across sign-up, log-in, a failed log-in, authenticated calls and an admin deposit, no log
    line holds a password, a device token or the admin token; each request has one JSON line
    with method, route, status, duration and request id."""
    caplog.set_level(logging.DEBUG)
    payee = api.user()
    payer = api.user(funds=5000)
    assert (
        api.post(
            "/sessions",
            json={"handle": payer.handle, "password": "wrong-password-1", "device_name": "x"},
        ).status_code
        == 401
    )
    assert api.get("/me", payer).status_code == 200
    assert api.get(f"/accounts/{payee.handle}", payer).status_code == 200
    assert (
        api.get("/me", headers={"Authorization": "Bearer not-a-real-token-42"}).status_code == 401
    )
    client.get("/healthz", headers={"X-Request-ID": "flow-check-1"})

    formatter = observability.JsonFormatter()
    lines = [formatter.format(record) for record in caplog.records]
    secrets = [PASSWORD, "wrong-password-1", payee.token, payer.token, ADMIN_TOKEN]
    secrets.append("not-a-real-token-42")
    for line in lines:
        for secret in secrets:
            assert secret not in line, line
    access = [json.loads(line) for line in lines if '"paycode.access"' in line]
    assert len(access) >= 8
    for entry in access:
        assert set(entry) >= {"method", "route", "status", "duration_ms", "request_id"}
    assert any(e["request_id"] == "flow-check-1" and e["route"] == "/healthz" for e in access)
    assert any(e["route"] == "/api/v1/sessions" and e["status"] == 401 for e in access)


def test_scrub_masks_secrets_in_free_text() -> None:
    """Whatever a message says, bearer tokens, password/token fields, URL passwords, code
    tokens in paths and full short codes are masked."""
    text = (
        'Authorization: Bearer abc.def-123 {"password": "hunter22", "token": "tok123"} '
        "postgresql://app:s3cret@db:5432/paycode GET /c/AbCdEfGhIjKlMnOp /scan/7K3M9X2QPA "
        "typed 7K3M-9X2Q-PA admin_token=supersecretvalue"
    )
    clean = observability.scrub(text)
    for secret in (
        "abc.def-123",
        "hunter22",
        "tok123",
        "s3cret",
        "EfGhIjKl",
        "9X2QPA",
        "supersecret",
    ):
        assert secret not in clean, clean
    assert "7K3M-****-**" in clean
    assert "/c/AbCd***" in clean


def published(account: str, seq: int, type_: str, data: dict[str, object]) -> Published:
    return Published(account, seq, {"type": type_, "created_at": "", "data": data})


def test_committed_events_count_each_payment_and_refund_once(client: TestClient) -> None:
    """A payment's events reach payer, payee and agent; the counter moves once per payment and
    once per refund, labelled by how it was paid."""
    before_dynamic = metric(client, "paycode_payments_total", kind="dynamic")
    before_direct = metric(client, "paycode_payments_total", kind="direct")
    before_refunds = metric(client, "paycode_refunds_total")
    pay = {"id": "pay_1", "code_kind": "dynamic", "refunded_amount": 0}
    observability.record_committed(
        [published(a, 1, "payment.succeeded", pay) for a in ("payer", "payee", "agent")]
        + [published("agent", 2, "code.paid", {"id": "code_1"})]
    )
    observability.record_committed(
        [published(a, 3, "payment.succeeded", {"id": "pay_2", "code_kind": None}) for a in "xy"]
    )
    refunded = {"id": "pay_1", "code_kind": "dynamic", "refunded_amount": 100}
    observability.record_committed([published(a, 4, "payment.refunded", refunded) for a in "xyz"])
    assert metric(client, "paycode_payments_total", kind="dynamic") == before_dynamic + 1
    assert metric(client, "paycode_payments_total", kind="direct") == before_direct + 1
    assert metric(client, "paycode_refunds_total") == before_refunds + 1


def test_push_latency_histogram_counts_a_push(client: TestClient) -> None:
    """A frame pushed for an event committed just before lands in a low bucket of the push
    latency histogram; unparseable times are ignored rather than raising."""
    before = metric(client, "paycode_push_latency_seconds_count")
    slow_before = metric(client, "paycode_push_latency_seconds_bucket", le="1.0")
    from datetime import UTC, datetime, timedelta

    observability.frame_pushed(datetime.now(UTC).isoformat().replace("+00:00", "Z"))
    observability.frame_pushed(datetime.now(UTC) - timedelta(seconds=3))
    observability.frame_pushed("not a time")
    assert metric(client, "paycode_push_latency_seconds_count") == before + 2
    assert metric(client, "paycode_push_latency_seconds_bucket", le="1.0") == slow_before + 1


def test_open_websockets_gauge_follows_accept_and_close() -> None:
    """The middleware counts a WebSocket from its accept until its handler returns, passes its
    frames through untouched, and leaves refused handshakes uncounted."""

    async def echo(websocket: WebSocket) -> None:
        if websocket.query_params.get("refuse"):
            await websocket.close(code=1008)
            return
        await websocket.accept()
        await websocket.send_text(await websocket.receive_text())
        await websocket.close()

    app = Starlette(
        routes=[WebSocketRoute("/ws", echo)],
        middleware=[Middleware(observability.ObservabilityMiddleware)],
    )
    gauge = observability.WEBSOCKETS_OPEN
    start = gauge._value.get()
    with TestClient(app) as client:
        with client.websocket_connect("/ws") as ws:
            assert gauge._value.get() == start + 1
            ws.send_text("hello")
            assert ws.receive_text() == "hello"
        with pytest.raises(WebSocketDisconnect), client.websocket_connect("/ws?refuse=1"):
            pass
    assert gauge._value.get() == start
