"""Fixtures shared by every test: one real database per backend, apps, and API helpers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from tests.api import Api
from tests.services import PostgresFactory, SqliteFactory, unavailable

ADMIN_TOKEN = "test-admin-token-0123456789"


@pytest.fixture(scope="session")
def pg_factory() -> Iterator[PostgresFactory]:
    factory = PostgresFactory()
    yield factory
    factory.drop_all()


@pytest.fixture(scope="session")
def sqlite_factory(tmp_path_factory: pytest.TempPathFactory) -> SqliteFactory:
    return SqliteFactory(Path(tmp_path_factory.mktemp("sqlite")))


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(
    request: pytest.FixtureRequest, sqlite_factory: SqliteFactory, pg_factory: PostgresFactory
) -> Iterator[str]:
    """A fresh, migrated database on each backend the product supports."""
    if request.param == "sqlite":
        yield sqlite_factory.create()
        return
    if not pg_factory.available():
        unavailable("PostgreSQL is not reachable on 127.0.0.1:5432")
    url = pg_factory.create()
    yield url
    pg_factory.drop(url)


def app_settings(database_url: str, **extra: Any) -> Settings:
    """The tests' settings; ``extra`` shrinks a limit so a test reaches it in a few requests
    (the logic is the production one)."""
    return Settings(
        database_url=database_url,
        admin_token=ADMIN_TOKEN,
        public_url_setting="http://testserver",
        extra=extra,
    )


@pytest.fixture
def settings(database_url: str) -> Settings:
    return app_settings(database_url)


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings, migrate_schema=False)) as test_client:
        yield test_client


@pytest.fixture
def api(client: TestClient) -> Api:
    return Api(client, ADMIN_TOKEN)
