"""Spec §2 for text, on every route of the app and both databases: a request part that is not
Unicode text — a lone surrogate in a JSON string, a percent-escape that decodes to invalid
UTF-8 or to a surrogate in a path or a query, a header value the app reads that is not UTF-8 —
is 400 ``malformed_request`` before any route code runs; any other text (NUL, noncharacters,
every plane) in any part is answered with a 2xx/3xx or a 4xx with the error body, never a 5xx.
Routes are read from the app itself, so a new route is covered the day it is added."""

from __future__ import annotations

import csv
import io
import json
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.routing import Mount, Route
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from tests.api import Api, User
from tests.conftest import ADMIN_TOKEN
from tests.server import running_server
from tests.strategies import any_text

FIELD_NAMES = [
    "handle", "display_name", "password", "device_name", "amount", "agent", "payee", "label",
    "agency_id", "kind", "items", "memo", "code", "reason", "url", "description", "events",
]  # fmt: skip
QUERY_NAMES = [
    "role", "status", "agent", "code_id", "from", "to", "limit", "cursor", "after", "scale",
    "lang",
]  # fmt: skip


def is_text(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def escaped(value: str) -> str:
    """Percent-escapes of the text's UTF-8 bytes, a lone surrogate as its 3 bytes (ED A0 80),
    which strict UTF-8 refuses: what a client that does not check its text sends."""
    return quote(value.encode("utf-8", "surrogatepass"), safe="")


def routes_of(app: Any) -> list[tuple[str, str, list[str]]]:
    """(method, path template, parameter names) of every HTTP route, mounted ones included."""
    found: list[tuple[str, str, list[str]]] = []

    def walk(routes: list[Any], prefix: str) -> None:
        for route in routes:
            if isinstance(route, Mount):
                walk(route.routes, prefix + route.path)
            elif isinstance(route, Route):
                for method in sorted((route.methods or {"GET"}) - {"HEAD"}):
                    found.append((method, prefix + route.path, list(route.param_convertors)))

    walk(app.routes, "")
    return found


@pytest.fixture
def caller(api: Api) -> User:
    """An account with money, an agency, codes and a payment, so routes get past their
    first lookups."""
    payee, agent, payer = api.user(funds=100_000), api.user(), api.user(funds=100_000)
    agency = api.agency(payee, agent)
    static = api.code(payee, agency["id"], kind="static")
    paid = api.post("/payments", payer, json={"code": static["token"], "amount": 250})
    assert paid.status_code == 201, paid.text
    return payee


requests = st.fixed_dictionaries(
    {
        "path_values": st.lists(any_text(min_size=1, max_size=12), min_size=3, max_size=3),
        "query": st.dictionaries(st.sampled_from(QUERY_NAMES), any_text(max_size=30), max_size=4),
        "body": st.dictionaries(
            st.sampled_from(FIELD_NAMES) | any_text(max_size=6),
            any_text(max_size=30) | st.integers(0, 10**6) | st.lists(any_text(max_size=8)),
            max_size=5,
        ),
        # Starlette's test client re-encodes header values as UTF-8, so bytes that are not
        # UTF-8 are sent by a real client to a real server instead (below).
        "idempotency_key": st.none()
        | any_text(min_size=1, max_size=20)
        .filter(lambda key: is_text(key) and not set(key) & set("\r\n\x00"))
        .map(lambda key: key.encode("utf-8")),
    }
)


def is_text_bytes(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def unreadable_url_or_header(parts: dict[str, Any], names: list[str]) -> bool:
    """Whether a part the guard checks before routing is not Unicode text."""
    texts = [*parts["path_values"][: len(names)], *parts["query"]]
    texts += parts["query"].values()
    key = parts["idempotency_key"]
    return not all(is_text(text) for text in texts) or (key is not None and not is_text_bytes(key))


def with_body(client: TestClient) -> set[tuple[str, str]]:
    """(method, path template) of every operation that reads a JSON body."""
    document = client.get("/openapi.json").json()
    prefix = document["servers"][0]["url"]
    return {
        (method.upper(), prefix + path)
        for path, operations in document["paths"].items()
        for method, operation in operations.items()
        if "requestBody" in operation
    }


def test_every_route_refuses_text_that_is_not_unicode_and_survives_any_other(
    api: Api, caller: User
) -> None:
    """Any route and method, with path segments, query names and values, body strings (and
    keys) and an Idempotency-Key drawn from all of Unicode and from raw bytes: a path, query
    or header that is not Unicode text is 400 malformed_request on every route; a body that is
    not is never taken (a 4xx, 400 malformed_request unless an earlier check answered first);
    anything else is never a 5xx, and every JSON error carries {code, message, field}."""
    client: TestClient = api.client
    routes = routes_of(client.app)
    reads_body = with_body(client)
    assert len(routes) >= 35 and len(reads_body) >= 8
    seen = {"url_or_header": 0, "body": 0, "all": 0}

    # Half the draws on a route that reads a body, so bodies are tried as often as URLs.
    body_routes = [route for route in routes if (route[0], route[1]) in reads_body]
    any_route = st.sampled_from(body_routes) | st.sampled_from(routes)

    @settings(
        max_examples=300,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(route=any_route, parts=requests)
    def check(route: tuple[str, str, list[str]], parts: dict[str, Any]) -> None:
        method, template, names = route
        seen["all"] += 1
        path = template
        for name, value in zip(names, parts["path_values"], strict=False):
            path = path.replace("{" + name + "}", escaped(value))
        query = "&".join(f"{escaped(k)}={escaped(v)}" for k, v in parts["query"].items())
        headers: dict[str, Any] = {**caller.headers, "content-type": "application/json"}
        if parts["idempotency_key"] is not None:
            headers["idempotency-key"] = parts["idempotency_key"]
        has_body = (method, template) in reads_body
        # ensure_ascii: a lone surrogate travels as its \\u escape, as JSON allows.
        content = json.dumps(parts["body"]).encode("ascii") if has_body else b""
        response = client.request(
            method, f"{path}?{query}" if query else path, content=content, headers=headers
        )
        where = (method, path, query, parts["body"], response.status_code, response.text[:300])
        assert response.status_code < 500, where
        if unreadable_url_or_header(parts, names):
            seen["url_or_header"] += 1
            assert response.status_code == 400, where
            assert response.json()["error"]["code"] == "malformed_request", where
            return
        if has_body and not is_text(json.dumps(parts["body"], ensure_ascii=False)):
            seen["body"] += 1
            assert 400 <= response.status_code < 500, where
        if response.status_code >= 400 and "json" in response.headers.get("content-type", ""):
            assert set(response.json()["error"]) == {"code", "message", "field"}, where

    check()
    # The strategies reach both kinds of unreadable text, not only the happy paths.
    assert seen["url_or_header"] >= 10 and seen["body"] >= 10, seen


def test_a_lone_surrogate_in_a_body_is_400_on_the_routes_that_broke(api: Api) -> None:
    """The requests of the defect report, answered 400 instead of 500: a display name, a
    password, and a handle holding "\\ud800" as a JSON escape."""
    user = api.user()
    cases = [
        ("/accounts", b'{"handle":"bob_sur","password":"correct horse","display_name":"\\ud800"}'),
        ("/sessions", b'{"handle":"' + user.handle.encode() + b'","password":"\\ud800"}'),
        ("/agencies", b'{"agent":"\\ud800x"}'),
        ("/payments", b'{"payee":"someone","amount":100,"memo":"\\udfff"}'),
    ]
    for path, body in cases:
        response = api.client.post(
            f"/api/v1{path}", content=body, headers={**user.headers, "content-type": "x"}
        )
        assert response.status_code == 400, (path, response.text)
        assert response.json()["error"]["code"] == "malformed_request"


def test_a_header_the_app_reads_that_is_not_utf8_is_400(database_url: str) -> None:
    """Through a real client and server: an Authorization or Idempotency-Key value whose bytes
    are not UTF-8 (a UTF-8-encoded surrogate among them) is refused as unreadable, not taken
    as Latin-1 text; the same value as UTF-8 text is an ordinary 401 or 422."""
    with running_server(database_url, ADMIN_TOKEN) as base, httpx.Client(base_url=base) as http:
        user = Api(http, ADMIN_TOKEN).user()
        for raw in (b"Bearer \xff\xfe", b"Bearer \xed\xa0\x80"):
            response = http.get("/api/v1/me", headers={"authorization": raw})
            assert response.status_code == 400, response.text
            assert response.json()["error"]["code"] == "malformed_request"
        response = http.get("/api/v1/me", headers={"authorization": "Bearer é".encode()})
        assert response.status_code == 401
        body = {"payee": "x", "amount": 1}
        for raw, status in ((b"\xed\xa0\x80", 400), ("ключ".encode(), 422)):
            headers = {**user.headers, "idempotency-key": raw}
            response = http.post("/api/v1/payments", json=body, headers=headers)
            assert response.status_code == status, response.text
        assert (
            "idempotency-key"
            in http.post(
                "/api/v1/payments", json=body, headers={**user.headers, "idempotency-key": b"\xff"}
            ).json()["error"]["message"]
        )


def test_a_websocket_whose_query_is_not_utf8_is_refused_at_the_handshake(api: Api) -> None:
    """The WebSocket's URL is checked like any other: the handshake is refused (1007)."""
    with pytest.raises(WebSocketDisconnect) as refused:  # noqa: SIM117
        with api.client.websocket_connect("/api/v1/ws?x=%ED%A0%80"):
            pass
    assert refused.value.code == 1007


def test_the_csv_export_is_whole_or_refused_for_any_filter_text(api: Api, caller: User) -> None:
    """GET /payments.csv with filters drawn from all of Unicode is a 4xx before its first
    byte, or a complete export: exactly the rows the JSON list gives for the same filters
    (a NUL in a filter once cut the export after its status line on PostgreSQL)."""
    client: TestClient = api.client

    @settings(
        max_examples=60,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(filters=st.dictionaries(st.sampled_from(QUERY_NAMES[:6]), any_text(max_size=12)))
    def check(filters: dict[str, str]) -> None:
        query = "&".join(f"{k}={escaped(v)}" for k, v in filters.items())
        exported = client.get(f"/api/v1/payments.csv?{query}", headers=caller.headers)
        listed = client.get(f"/api/v1/payments?{query}&limit=200", headers=caller.headers)
        assert exported.status_code < 500, (filters, exported.text)
        assert exported.status_code == listed.status_code, (filters, exported.text, listed.text)
        if exported.status_code != 200:
            return
        rows = list(csv.reader(io.StringIO(exported.text)))
        assert rows[0][0] == "id" and len(rows[0]) == 12
        assert [row[0] for row in rows[1:]] == [p["id"] for p in listed.json()["data"]]

    check()
