"""Secrets stay secret: no token or password in a real server's logs across a full run, the
admin token compared in constant time, security headers on pages and API alike, and no
cookie ever set (the session is a bearer token, so there is no cookie to flag)."""

from __future__ import annotations

import hmac
import json
import time
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient
from websockets.sync.client import connect

from tests.api import PASSWORD, Api
from tests.conftest import ADMIN_TOKEN
from tests.server import logged_server


def full_run(http: httpx.Client, ws_base: str) -> list[str]:
    """Sign-up, logins (one failed), admin deposit, agency, codes, scans, a payment by short
    code and one by token, a refund, a socket with hello, bad tokens, log-out. Returns every
    secret that crossed the wire."""
    api = Api(http, ADMIN_TOKEN)
    payee, agent, payer = api.user(), api.user(), api.user(funds=10_000)
    wrong = "Wrong-Password-7731"
    failed = api.post("/sessions", json={"handle": payer.handle, "password": wrong})
    assert failed.status_code == 401
    agency = api.agency(payee, agent, can_refund=True)
    code = api.code(agent, agency["id"])
    static = api.code(payee, agency["id"], kind="static")
    secrets = [PASSWORD, wrong, ADMIN_TOKEN, payee.token, agent.token, payer.token]
    secrets += [code["token"], static["token"], code["short_code"].replace("-", "")]
    with connect(f"{ws_base}/api/v1/ws", subprotocols=["paycode.v1.json"]) as socket:  # type: ignore[list-item]
        socket.send(json.dumps({"type": "hello", "token": agent.token, "after": 0}))
        assert json.loads(socket.recv(timeout=5))["type"] == "welcome"
        assert api.get(f"/scan/{code['short_code']}", payer).status_code == 200
        paid = api.post("/payments", payer, json={"code": code["short_code"]})
        assert paid.status_code == 201, paid.text
        seen = [json.loads(socket.recv(timeout=5)) for _ in range(2)]
        assert {frame["type"] for frame in seen} == {"event"}
    by_token = api.post("/payments", payer, json={"code": static["token"], "amount": 300})
    assert by_token.status_code == 201
    refund = api.post(f"/payments/{by_token.json()['id']}/refunds", agent, json={"amount": 100})
    assert refund.status_code == 201
    assert http.get(f"/c/{static['token']}").status_code == 200
    assert (
        api.get("/me", headers={"Authorization": "Bearer pc_not-a-real-one-8841"}).status_code
        == 401
    )
    secrets.append("pc_not-a-real-one-8841")
    with connect(f"{ws_base}/api/v1/ws") as socket:
        socket.send(json.dumps({"type": "hello", "token": "pc_bad-socket-token-5521"}))
        with pytest.raises(Exception, match="4401"):
            socket.recv(timeout=5)
    secrets.append("pc_bad-socket-token-5521")
    assert api.delete("/sessions/current", payer).status_code == 204
    return secrets


def test_a_full_run_logs_no_token_or_password(database_url: str) -> None:
    """Everything a real server printed over a whole shop day — passwords (right and wrong),
    device tokens (good and bad, over HTTP and the socket), the admin token, code tokens and
    full short codes — holds none of those secrets, while the log did record the requests."""
    with logged_server(database_url, ADMIN_TOKEN, extra_env={"PAYCODE_LOG_LEVEL": "debug"}) as (
        base,
        read_log,
    ):
        with httpx.Client(base_url=base, timeout=10) as http:
            secrets = full_run(http, "ws://" + base.removeprefix("http://"))
        time.sleep(0.3)
        output = read_log()
    assert output.count('"paycode.access"') >= 15, output[-2000:]
    for secret in secrets:
        assert secret not in output, f"{secret!r} leaked into the log"


def test_the_admin_token_is_compared_in_constant_time(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each admin call compares the token with hmac.compare_digest (time independent of where
    the first difference is), right or wrong; a user's token there is 401."""
    compared: list[tuple[Any, Any]] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    user = api.user()
    body = {"handle": user.handle, "amount": 100}
    near_miss = ADMIN_TOKEN[:-1] + ("x" if ADMIN_TOKEN[-1] != "x" else "y")
    for token, status in ((near_miss, 401), (user.token, 401), (ADMIN_TOKEN, 201)):
        compared.clear()
        response = api.post(
            "/admin/deposits", json=body, headers={"Authorization": f"Bearer {token}"}
        )
        assert response.status_code == status
        assert compared == [(token, ADMIN_TOKEN)]


def _responses(client: TestClient, api: Api) -> list[httpx.Response]:
    payee, agent, payer = api.user(), api.user(), api.user(funds=5000)
    agency = api.agency(payee, agent)
    code = api.code(agent, agency["id"])
    login = api.post(
        "/sessions", json={"handle": payer.handle, "password": PASSWORD, "device_name": "x"}
    )
    paid = api.post("/payments", payer, json={"code": code["token"]})
    return [
        client.get("/"),
        client.get("/counter"),
        client.get("/dashboard"),
        client.get("/pay"),
        client.get(f"/c/{code['token']}"),
        client.get("/static/js/api.js"),
        client.get("/healthz"),
        client.get("/metrics"),
        client.get("/openapi.json"),
        login,
        paid,
        api.get("/me", payer),
        api.get("/me"),
        api.get("/payments/pay_nothing", payer),
        api.get(f"/codes/{code['id']}/qr.png", agent),
        api.get(f"/codes/{code['id']}/qr.svg", agent),
        api.get("/payments.csv", payee),
        api.post("/payments", payer, content=b"{not json"),
        api.post("/payments", payer, json={"payee": payee.handle, "amount": 0}),
        client.get("/no/such/page"),
    ]


def test_security_headers_everywhere_and_no_cookie_anywhere(client: TestClient, api: Api) -> None:
    """Pages, static files, ops, API successes and errors alike carry a CSP with
    frame-ancestors 'none', nosniff, no-referrer and X-Frame-Options DENY, and none sets a
    cookie."""
    for response in _responses(client, api):
        where = f"{response.request.method} {response.request.url.path} {response.status_code}"
        headers = response.headers
        csp = headers.get("content-security-policy", "")
        assert "frame-ancestors 'none'" in csp, where
        assert "default-src 'self'" in csp and "object-src 'none'" in csp, where
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp, where
        assert headers.get("x-content-type-options") == "nosniff", where
        assert headers.get("referrer-policy") == "no-referrer", where
        assert headers.get("x-frame-options") == "DENY", where
        assert "set-cookie" not in headers, where
