"""`paycode serve --workers N` as a real process tree on PostgreSQL and Redis (spec §1, §9)."""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from app.cluster import AppProcess
from tests.api import PASSWORD, Api
from tests.cluster import RedisServer
from tests.conftest import ADMIN_TOKEN
from tests.server import children, listens, peer_ports
from tests.services import PostgresFactory, free_port, unavailable

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis]


@pytest.fixture
def served(pg_factory: PostgresFactory, tmp_path: Path) -> Iterator[AppProcess]:
    """`paycode serve --workers 2` on a fresh PostgreSQL database and a private Redis."""
    if not pg_factory.available():
        unavailable("PostgreSQL is not reachable on 127.0.0.1:5432")
    if not RedisServer.available():
        unavailable("redis-server is not installed")
    redis_server = RedisServer()
    redis_server.start()
    database_url = pg_factory.create()
    env = {
        **os.environ,
        "PAYCODE_DATABASE_URL": database_url,
        "PAYCODE_BROKER_URL": redis_server.url,
        "PAYCODE_ADMIN_TOKEN": ADMIN_TOKEN,
        "TMPDIR": str(tmp_path),
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    process = AppProcess(0, free_port(), env, tmp_path / "serve.log", ("--workers", "2"))
    process.start()
    try:
        process.wait_ready(60)
        yield process
    finally:
        process.stop()
        redis_server.stop()
        pg_factory.drop(database_url)


def healthz_count(url: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=5).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if (
                sample.name == "paycode_http_requests_total"
                and sample.labels.get("route") == "/healthz"
            ):
                return float(sample.value)
    return 0.0


def test_workers_share_redis_and_one_metrics_view(served: AppProcess, tmp_path: Path) -> None:
    """Two uvicorn workers serve one port on Redis; /metrics, whichever worker answers it, sums
    both workers' counters and the webhook sender's (prometheus-client multiprocess mode); the
    logs of the whole flow are JSON lines with no password or token; SIGTERM stops the tree and
    removes its metrics dir."""
    assert served.pid is not None
    workers = children(served.pid)
    assert len(workers) >= 2, workers
    metrics_dirs = list(tmp_path.glob("paycode-metrics-*"))
    assert len(metrics_dirs) == 1

    for _ in range(30):
        # A new connection each time, so the kernel spreads them over the workers.
        assert httpx.get(f"{served.url}/healthz", timeout=5).status_code == 200
    counts = {healthz_count(served.url) for _ in range(6)}
    assert counts == {30.0}, counts
    # The two workers' files, and the webhook sender's, which writes beside them.
    writers = {p.name.rsplit("_", 1)[-1] for p in metrics_dirs[0].glob("counter_*.db")}
    assert len(writers) == 3
    assert writers <= {f"{pid}.db" for pid in children(served.pid)}

    with httpx.Client(base_url=served.url, timeout=10) as http:
        api = Api(http, ADMIN_TOKEN)
        payer = api.user(funds=1000)
        payee = api.user()
        paid = api.post(
            "/payments",
            payer,
            json={"payee": payee.handle, "amount": 250},
            headers={"Idempotency-Key": "serve-workers-1"},
        )
        assert paid.status_code == 201, paid.text

    served.terminate()
    assert served.wait(30) in (0, -signal.SIGTERM)
    deadline = time.monotonic() + 5
    while metrics_dirs[0].exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not metrics_dirs[0].exists()

    log = served.log_path.read_text()
    for secret in (PASSWORD, payer.token, payee.token, ADMIN_TOKEN):
        assert secret not in log
    lines = [line for line in log.splitlines() if line.strip()]
    assert lines and all(line.startswith("{") for line in lines), lines[:3]
    assert '"route": "/api/v1/payments"' in log


def test_connections_opened_together_are_spread_over_the_workers(served: AppProcess) -> None:
    """64 keep-alive connections opened at once, as a load balancer's pool opens them: each
    worker listens on a socket of its own in one SO_REUSEPORT group, so each gets a share.
    On the one socket uvicorn's workers share, whichever worker woke first took nearly all
    (63 of 64 in the 100-shop benchmark). A hash spreads 64 connections unevenly but never
    this unevenly: fewer than 12 on one of two workers has odds of about one in ten million."""
    assert served.pid is not None
    # /healthz answers once the first worker is up; a worker still starting has no socket in
    # the group yet, and every connection would go to the other.
    deadline = time.monotonic() + 60
    while sum(listens(pid, served.port) for pid in children(served.pid)) < 2:
        assert time.monotonic() < deadline, "the second worker never listened"
        time.sleep(0.1)
    connections = [socket.create_connection(("127.0.0.1", served.port)) for _ in range(64)]
    try:
        request = f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{served.port}\r\n\r\n".encode()
        for connection in connections:
            connection.sendall(request)
        for connection in connections:
            assert connection.recv(65536).startswith(b"HTTP/1.1 200")
        ours = {connection.getsockname()[1] for connection in connections}
        shares = {pid: len(peer_ports(pid, served.port) & ours) for pid in children(served.pid)}
        serving = sorted(count for count in shares.values() if count)
        assert sum(serving) == 64, shares
        assert len(serving) == 2 and serving[0] >= 12, shares
    finally:
        for connection in connections:
            connection.close()


def test_a_second_server_on_the_same_port_is_refused(served: AppProcess, tmp_path: Path) -> None:
    """SO_REUSEPORT would let a second server of the same user join the first one's group and
    take a share of its connections; ``paycode serve --workers 2`` on a port in use refuses
    to start instead."""
    second = AppProcess(1, served.port, served.env, tmp_path / "second.log", ("--workers", "2"))
    second.start()
    try:
        # uvicorn's exit status for a server that failed to start.
        assert second.wait(60) == 3
        assert "cannot listen on" in second.log_path.read_text()
        assert httpx.get(f"{served.url}/healthz", timeout=5).status_code == 200
    finally:
        second.stop()
