"""The order of the answers on the code and payment routes: authentication first (401), then
the Idempotency-Key, then the body, then the lookup limiter — although the token is resolved
in the same worker-thread hop as the work, after the body has been read."""

from __future__ import annotations

import pytest

from models import shortcodes
from tests.api import Api

BAD_TOKEN = {"Authorization": "Bearer not-a-token"}
BAD_KEY = "\x7f"


@pytest.mark.parametrize("path", ["/codes", "/payments", "/payments/p_x/refunds"])
def test_a_bad_token_is_401_before_a_bad_key_or_body(api: Api, path: str) -> None:
    """A caller without a valid token learns nothing about its key or body: 401 every time."""
    for headers in (BAD_TOKEN, {}):
        for extra, content in (
            ({"Idempotency-Key": BAD_KEY}, b"{}"),
            ({}, b"{not json"),
            ({}, b"[1]"),
            ({}, b"x" * (64 * 1024 + 1)),
        ):
            response = api.post(path, headers={**headers, **extra}, content=content)
            assert response.status_code == 401, (path, extra, response.text)
            assert response.json()["error"]["code"] == "unauthorized"


def test_a_bad_token_is_401_before_bad_query_parameters(api: Api) -> None:
    """Listing with a bad token and a bad query answers 401, not 422."""
    for path in ("/codes?role=nobody&limit=0", "/payments?role=nobody&from=yesterday"):
        assert api.get(path, headers=BAD_TOKEN).status_code == 401


def test_a_valid_caller_gets_the_key_error_before_the_body_error(api: Api) -> None:
    """Key before body, body before the business rules, as they were checked in turn."""
    user = api.user()
    both = api.post("/codes", user, headers={"Idempotency-Key": BAD_KEY}, content=b"{no")
    assert both.status_code == 422
    assert both.json()["error"]["field"] == "Idempotency-Key"
    body = api.post("/payments", user, content=b"{no")
    assert body.status_code == 400
    assert api.get("/codes?role=nobody", user).json()["error"]["field"] == "role"


def test_a_limited_payer_gets_key_and_body_errors_before_the_429(api: Api) -> None:
    """Once the limiter refuses a payer, a bad key is still 422 and a well-formed payment by code
    is 429: the check made in the token's read transaction still runs before the payment."""
    payer = api.user(funds=1000)
    guess = shortcodes.display(shortcodes.generate())
    statuses = [
        api.post("/payments", payer, json={"code": guess, "amount": 100}).status_code
        for _ in range(25)
    ]
    assert statuses[-1] == 429, statuses
    bad_key = api.post(
        "/payments", payer, headers={"Idempotency-Key": BAD_KEY}, json={"code": guess}
    )
    assert bad_key.status_code == 422
    assert api.post("/payments", payer, json={"code": guess, "amount": 100}).status_code == 429
    direct = api.post("/payments", payer, json={"payee": payer.handle, "amount": 1})
    assert direct.status_code != 429
