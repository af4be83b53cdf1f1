"""The processes a benchmark run starts and stops itself: paycode, the bare baseline app,
a private redis-server, and a throwaway PostgreSQL database. Every wait is bounded."""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.request import urlopen

import psutil

from app.cluster import free_port

ROOT = Path(__file__).resolve().parent.parent
ADMIN_TOKEN = "bench-admin-token-0123456789abcdef"
PG_ADMIN_URL = os.environ.get("PAYCODE_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")


def raise_nofile() -> None:
    """Lift the soft open-files limit to the hard one: 10,000 sockets need 10,000 fds."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def host(self) -> str:
        return "127.0.0.1"

    def tree(self) -> list[psutil.Process]:
        try:
            root = psutil.Process(self.proc.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def rss(self) -> int:
        """Resident memory of the server and its worker processes, in bytes."""
        total = 0
        for proc in self.tree():
            with contextlib.suppress(psutil.NoSuchProcess):
                total += proc.memory_info().rss
        return total

    def cpu_seconds(self) -> float:
        total = 0.0
        for proc in self.tree():
            with contextlib.suppress(psutil.NoSuchProcess):
                times = proc.cpu_times()
                total += times.user + times.system
        return total

    def worker_pids(self) -> list[int]:
        """The processes that serve requests: the children with --workers > 1, else the root."""
        tree = self.tree()
        children = [p.pid for p in tree[1:] if "spawn_main" in " ".join(p.cmdline())]
        return children or [self.proc.pid]

    def stop(self, timeout: float = 15.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)


def _wait_http(
    port: int, path: str, proc: subprocess.Popen[bytes], log: Path, limit: float
) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urlopen(f"http://127.0.0.1:{port}{path}", timeout=1) as reply:
                if reply.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"server not up within {limit}s:\n{log.read_text()[-3000:]}")


def _spawn(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=raise_nofile,
            start_new_session=True,
        )


def start_paycode(
    database_url: str, broker_url: str, workers: int, logs: Path, *, port: int | None = None
) -> Server:
    port = port or free_port()
    env = {
        **os.environ,
        "PAYCODE_DATABASE_URL": database_url,
        "PAYCODE_BROKER_URL": broker_url,
        "PAYCODE_ADMIN_TOKEN": ADMIN_TOKEN,
        "PAYCODE_LOG_LEVEL": "warning",
    }
    log = logs / f"paycode-{port}.log"
    cmd = [sys.executable, "-m", "app.cli", "serve", "--host", "127.0.0.1", "--port", str(port)]
    proc = _spawn([*cmd, "--workers", str(workers)], env, log)
    _wait_http(port, "/healthz", proc, log, 90)
    return Server(proc, port, log)


def start_baseline(logs: Path, app: str = "loadtests.baseline_app:app") -> Server:
    """A bare app under the uvicorn settings ``paycode serve`` uses (uvloop, httptools,
    permessage-deflate off, warning log level): the bare POST by default."""
    port = free_port()
    log = logs / f"baseline-{port}.log"
    cmd = [sys.executable, "-m", "uvicorn", app, "--host", "127.0.0.1"]
    cmd += ["--port", str(port), "--ws-per-message-deflate", "false", "--log-level", "warning"]
    proc = _spawn(cmd, {**os.environ, "PAYCODE_ADMIN_TOKEN": ADMIN_TOKEN}, log)
    _wait_http(port, "/healthz", proc, log, 30)
    return Server(proc, port, log)


def start_bare_shop(logs: Path) -> Server:
    """The bare sale (``loadtests/bare_shop.py``) under the same settings as the bare POST."""
    return start_baseline(logs, "loadtests.bare_shop:app")


@contextlib.contextmanager
def redis_server(logs: Path) -> Iterator[str]:
    """A private redis-server, so a run never shares channels with anything else."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed")
    port = free_port()
    log = logs / f"redis-{port}.log"
    cmd = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    proc = _spawn(cmd, dict(os.environ), log)
    try:
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def _pg_with_db(name: str) -> str:
    head, _, _ = PG_ADMIN_URL.rpartition("/")
    return f"{head}/{name}"


@contextlib.contextmanager
def pg_database() -> Iterator[str]:
    """A fresh PostgreSQL database, dropped at the end whatever happens."""
    import psycopg

    name = f"paycode_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield _pg_with_db(name)
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def pg_available() -> bool:
    try:
        import psycopg

        with psycopg.connect(PG_ADMIN_URL, connect_timeout=3):
            return True
    except Exception:
        return False
