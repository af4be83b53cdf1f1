"""Spec §2: whatever a client sends to any POST route, the answer is a 4xx with the error
body or a success — never a 5xx, never a body of another shape. Routes are read from the app
itself, so a new route is covered the day it is added."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.routing import Mount, Route

from tests.api import Api, User
from tests.strategies import any_text

FIELD_NAMES = [
    "handle", "display_name", "password", "device_name", "amount", "agent", "payee", "label",
    "can_refund", "agency_id", "kind", "items", "memo", "expires_in", "code", "reason", "receipt",
]  # fmt: skip

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    any_text(max_size=40),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.sampled_from(FIELD_NAMES), inner, max_size=4),
    ),
    max_leaves=12,
)
bodies = st.one_of(
    st.dictionaries(st.sampled_from(FIELD_NAMES), values, max_size=8).map(json.dumps),
    values.map(json.dumps),
    st.binary(max_size=64).map(lambda raw: raw.decode("latin-1")),
)


def post_paths(app: Any, ids: dict[str, str]) -> list[str]:
    """Every POST route under /api/v1, with path parameters filled by real or unknown ids."""
    paths: list[str] = []
    for mount in app.routes:
        if not isinstance(mount, Mount) or mount.path != "/api/v1":
            continue
        for route in mount.routes:
            if isinstance(route, Route) and "POST" in (route.methods or ()):
                path = route.path
                for name in route.param_convertors:
                    path = path.replace("{" + name + "}", ids.get(name, "unknown_1"))
                paths.append("/api/v1" + path)
    return paths


@pytest.fixture
def fixtures(api: Api) -> tuple[User, dict[str, str]]:
    payee, agent = api.user(funds=10_000), api.user()
    agency = api.agency(payee, agent)
    return payee, {"agency_id": agency["id"], "id": agency["id"]}


def test_every_post_route_answers_garbage_with_a_4xx_error_body(
    api: Api, fixtures: tuple[User, dict[str, str]]
) -> None:
    """Random JSON, wrong types, huge integers, floats, text from all of Unicode (lone
    surrogates, NUL, noncharacters) and non-UTF-8 bytes on every POST route: no 5xx, and every
    error carries {code, message, field}."""
    user, ids = fixtures
    paths = post_paths(api.client.app, ids)
    assert len(paths) >= 5

    @settings(
        max_examples=25,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(body=bodies, path=st.sampled_from(paths))
    def check(body: str, path: str) -> None:
        response = api.client.post(
            path,
            content=body.encode("utf-8", "surrogatepass"),
            headers={**user.headers, "Content-Type": "application/json"},
        )
        assert response.status_code < 500, (path, body, response.text)
        if response.status_code >= 400:
            error = response.json()["error"]
            assert set(error) == {"code", "message", "field"}, (path, body, response.text)

    check()
