"""Real backing services for tests: PostgreSQL databases made from a migrated template, and
SQLite files copied from one. Without a server the test skips, unless PAYCODE_REQUIRE_SERVICES
is set, when it fails: CI must never pass by skipping."""

from __future__ import annotations

import os
import shutil
import socket
import uuid
from pathlib import Path

import pytest

from app.cluster import free_port as free_port  # the tests import it from here

PG_ADMIN_URL = os.environ.get("PAYCODE_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("PAYCODE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def require_services() -> bool:
    return os.environ.get("PAYCODE_REQUIRE_SERVICES", "") not in ("", "0")


def unavailable(reason: str) -> None:
    if require_services():
        pytest.fail(f"{reason} (PAYCODE_REQUIRE_SERVICES=1 forbids skipping)")
    pytest.skip(reason)


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def _pg_admin():  # type: ignore[no-untyped-def]
    import psycopg

    return psycopg.connect(PG_ADMIN_URL, autocommit=True)


def _with_db(url: str, name: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).set(database=name).render_as_string(hide_password=False)


class PostgresFactory:
    """Creates throwaway databases; the first one migrated becomes the template of the rest."""

    def __init__(self) -> None:
        self.template: str | None = None
        self.created: list[str] = []

    def available(self) -> bool:
        try:
            with _pg_admin():
                return True
        except Exception:
            return False

    def create(self, migrated: bool = True) -> str:
        from models import migrate

        name = f"paycode_t_{uuid.uuid4().hex[:12]}"
        with _pg_admin() as conn:
            if migrated and self.template is None:
                template = f"paycode_tpl_{uuid.uuid4().hex[:8]}"
                conn.execute(f'CREATE DATABASE "{template}"')
                self.created.append(template)
                migrate.upgrade(_with_db(PG_ADMIN_URL, template))
                self.template = template
            if migrated:
                conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{self.template}"')
            else:
                conn.execute(f'CREATE DATABASE "{name}"')
        self.created.append(name)
        return _with_db(PG_ADMIN_URL, name)

    def drop(self, url: str) -> None:
        from sqlalchemy.engine import make_url

        name = make_url(url).database
        with _pg_admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if name in self.created:
            self.created.remove(name)

    def drop_all(self) -> None:
        with _pg_admin() as conn:
            for name in reversed(self.created):
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self.created.clear()


class SqliteFactory:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.template: Path | None = None

    def create(self, migrated: bool = True) -> str:
        from models import migrate

        target = self.root / f"paycode-{uuid.uuid4().hex[:12]}.db"
        if migrated:
            if self.template is None:
                self.template = self.root / "template.db"
                migrate.upgrade(f"sqlite:///{self.template}")
            # The database and the webhook queue's file beside it go together.
            for source, copy in ((self.template, target), _queue_files(self.template, target)):
                shutil.copyfile(source, copy)
        return f"sqlite:///{target}"


def _queue_files(template: Path, target: Path) -> tuple[Path, Path]:
    from models.db import queue_path

    source, copy = queue_path(f"sqlite:///{template}"), queue_path(f"sqlite:///{target}")
    assert source is not None and copy is not None
    return source, copy
