"""An exception no handler knows: one log line with its traceback and the request id, a 500
with the §2 error body, and nothing passed on to the server (which would log it again)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from starlette.testclient import TestClient

from app.main import create_app
from app.observability import JsonFormatter
from app.services import payments as payments_service
from app.settings import Settings
from tests.api import Api
from tests.conftest import ADMIN_TOKEN


class Lines(logging.Handler):
    """Formats each record as the server's log would, while its request id is current."""

    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self.lines: list[dict[str, Any]] = []
        self.formatter_ = JsonFormatter()

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(json.loads(self.formatter_.format(record)))


@pytest.fixture
def error_lines() -> Iterator[Lines]:
    handler = Lines()
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield handler
    finally:
        root.removeHandler(handler)


def test_an_unexpected_exception_is_logged_once_with_traceback_and_request_id(
    settings: Settings, error_lines: Lines, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A service that raises something no handler maps: the client gets 500 internal_error
    with its X-Request-ID, exactly one error line names the route template (never the raw
    path) and carries that id and the traceback, and the test client (standing for the
    server) sees no exception."""

    def broken(*_args: Any, **_kwargs: Any) -> Any:
        raise RuntimeError("a defect")

    app = create_app(settings, migrate_schema=False)
    with TestClient(app, raise_server_exceptions=True) as client:
        user = Api(client, ADMIN_TOKEN).user()
        monkeypatch.setattr(payments_service, "list_visible", broken)
        response = client.get(
            "/api/v1/payments", headers={**user.headers, "x-request-id": "req-unexpected-1"}
        )
    assert response.status_code == 500
    assert response.json() == {
        "error": {"code": "internal_error", "message": "internal error", "field": None}
    }
    assert response.headers["x-request-id"] == "req-unexpected-1"
    assert len(error_lines.lines) == 1, error_lines.lines
    line = error_lines.lines[0]
    assert line["request_id"] == "req-unexpected-1"
    assert line["message"] == "unhandled error on GET /api/v1/payments"
    assert "RuntimeError: a defect" in line["exception"]
    assert "Traceback" in line["exception"]
