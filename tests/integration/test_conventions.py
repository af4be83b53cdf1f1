"""Spec §2: the error body, body limits, malformed JSON and the list envelope."""

from __future__ import annotations

from tests.api import Api


def test_malformed_json_and_bad_utf8_are_400(api: Api) -> None:
    """A body that is not UTF-8 JSON is 400 with the error body; never a 500."""
    for raw in [b"{not json", b"\xff\xfe{}", b'{"handle": "a"']:
        response = api.post("/accounts", content=raw, headers={"Content-Type": "application/json"})
        assert response.status_code == 400, raw
        error = response.json()["error"]
        assert set(error) == {"code", "message", "field"}


def test_a_body_that_is_not_an_object_is_422(api: Api) -> None:
    """JSON arrays or scalars are not request objects."""
    response = api.post("/accounts", json=[1, 2, 3])
    assert response.status_code == 422


def test_bodies_over_64_kib_are_413_and_write_nothing(api: Api) -> None:
    """A body over 64 KiB is refused before it is read whole."""
    big = {"handle": "bigbody", "display_name": "x" * (65 * 1024), "password": "long enough"}
    response = api.post("/accounts", json=big)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"
    assert (
        api.post("/sessions", json={"handle": "bigbody", "password": "long enough"}).status_code
        == 401
    )


def test_unknown_fields_are_ignored(api: Api) -> None:
    """Extra fields in a body do not fail a request."""
    response = api.post(
        "/accounts",
        json={"handle": "extra", "display_name": "E", "password": "long enough", "colour": "red"},
    )
    assert response.status_code == 201


def test_unknown_routes_and_methods_use_the_error_body(api: Api) -> None:
    """404 and 405 from routing still carry the §2 error body."""
    missing = api.get("/no-such-thing")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    wrong = api.request("PUT", "/accounts")
    assert wrong.status_code == 405 and "error" in wrong.json()


def test_a_garbage_token_is_401(api: Api) -> None:
    """Any malformed or unknown bearer token is 401 unauthorized."""
    for header in ["Bearer nope", "Basic abc", "Bearer " + "x" * 500, "Bearer"]:
        response = api.get("/me", headers={"Authorization": header})
        assert response.status_code == 401, header
        assert response.json()["error"]["code"] == "unauthorized"
