"""When every pooled database connection stays busy past the pool's timeout, a request is a
clean 503 with Retry-After (retry with the same Idempotency-Key) — never a 500."""

from __future__ import annotations

from starlette.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from tests.services import SqliteFactory


def test_an_exhausted_connection_pool_is_503(sqlite_factory: SqliteFactory) -> None:
    """The SQLite writer pool has one connection; while it is held, a write waits out the
    pool timeout and answers 503 unavailable."""
    app = create_app(Settings(database_url=sqlite_factory.create()), migrate_schema=False)
    with TestClient(app) as client:
        writer = app.state.paycode.db.writer
        writer.pool._timeout = 0.2  # the production timeout is a minute; the test cannot wait
        with writer.connect():
            response = client.post(
                "/api/v1/accounts",
                json={"handle": "waiting", "display_name": "W", "password": "long enough"},
            )
        assert response.status_code == 503, response.text
        assert response.json()["error"]["code"] == "unavailable"
        assert response.headers["Retry-After"] == "1"
        retried = client.post(
            "/api/v1/accounts",
            json={"handle": "waiting", "display_name": "W", "password": "long enough"},
        )
        assert retried.status_code == 201
