"""The fault-test topology: `make cluster` (3 app processes behind nginx, a private Redis) on
a PostgreSQL server of the tests' own, which they may restart."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from app.cluster import Cluster
from tests.chaos.postgres import PrivatePostgres
from tests.cluster import RedisServer, cluster_available
from tests.conftest import ADMIN_TOKEN
from tests.services import unavailable


@dataclass
class Faulty:
    cluster: Cluster
    redis: RedisServer
    postgres: PrivatePostgres
    database_url: str
    started: float


@pytest.fixture(scope="module")
def private_postgres() -> Iterator[PrivatePostgres]:
    missing = PrivatePostgres.available()
    if missing:
        unavailable(missing)
    server = PrivatePostgres().init()
    try:
        yield server
    finally:
        server.destroy()


@pytest.fixture
def faulty(private_postgres: PrivatePostgres, tmp_path: Path) -> Iterator[Faulty]:
    missing = cluster_available()
    if missing:
        unavailable(missing)
    database_url = private_postgres.create_database(f"chaos_{uuid.uuid4().hex[:10]}")
    redis = RedisServer()
    redis.start()
    cluster = Cluster(
        3,
        database_url=database_url,
        broker_url=redis.url,
        env={"PAYCODE_ADMIN_TOKEN": ADMIN_TOKEN, "PAYCODE_LOG_LEVEL": "warning"},
        run_dir=tmp_path / "cluster",
    )
    try:
        cluster.start()
        yield Faulty(cluster, redis, private_postgres, database_url, time.monotonic())
    finally:
        cluster.stop()
        redis.stop()
