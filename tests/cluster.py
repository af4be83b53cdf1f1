"""Real processes for integration tests: a private Redis that can be stopped and started, and
the `make cluster` topology (app processes behind nginx) from app.cluster."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager

import redis

from app.cluster import ClusterError, find_nginx
from tests.services import PostgresFactory, free_port, unavailable


def cluster_available() -> str | None:
    """Why `make cluster` cannot run here, or None. nginx is installed when missing, as the
    cluster script itself does."""
    if shutil.which("redis-server") is None:
        return "redis-server is not installed"
    try:
        find_nginx(install=True)
    except ClusterError as exc:
        return str(exc)
    return None


class RedisServer:
    """A redis-server of the test's own, on a free port, kept across stop/start so a client
    reconnects to the same address."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @staticmethod
    def available() -> bool:
        return shutil.which("redis-server") is not None

    def start(self, timeout: float = 10.0) -> None:
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                redis.Redis(port=self.port, socket_connect_timeout=0.2).ping()
                return
            except redis.RedisError as exc:
                if self.process.poll() is not None:
                    code = self.process.returncode
                    raise RuntimeError(f"redis-server exited with {code}") from exc
                time.sleep(0.05)
        raise RuntimeError("redis-server did not answer in time")

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None


@contextmanager
def postgres_and_redis(pg_factory: PostgresFactory) -> Iterator[tuple[str, RedisServer]]:
    """A fresh PostgreSQL database and a private redis-server, both gone afterwards; the test
    is unavailable (a failure under PAYCODE_REQUIRE_SERVICES) when either cannot be had."""
    if not pg_factory.available():
        unavailable("PostgreSQL is not reachable on 127.0.0.1:5432")
    if not RedisServer.available():
        unavailable("redis-server is not installed")
    database_url = pg_factory.create()
    redis_server = RedisServer()
    try:
        redis_server.start()
        yield database_url, redis_server
    finally:
        redis_server.stop()
        pg_factory.drop(database_url)
