"""A real ``paycode serve`` process on a free port, for tests that need true parallel
requests over sockets rather than an in-process client."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import httpx

from tests.services import free_port

ROOT = Path(__file__).resolve().parent.parent
READY_TIMEOUT = 30.0


class ServerFailed(RuntimeError):
    pass


@contextmanager
def running_server(
    database_url: str, admin_token: str, *, extra_env: dict[str, str] | None = None
) -> Iterator[str]:
    """Start ``paycode serve`` against the database; yield its base URL; stop it after."""
    with logged_server(database_url, admin_token, extra_env=extra_env) as (base_url, _log):
        yield base_url


@contextmanager
def logged_server(
    database_url: str, admin_token: str, *, extra_env: dict[str, str] | None = None
) -> Iterator[tuple[str, Callable[[], str]]]:
    """``running_server`` that also yields a reader of everything the server has logged."""
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "PAYCODE_DATABASE_URL": database_url,
        "PAYCODE_ADMIN_TOKEN": admin_token,
        "PAYCODE_BROKER_URL": "memory://",
        "PAYCODE_LOG_LEVEL": "warning",
        **(extra_env or {}),
    }
    # A file, not a pipe: a pipe nobody reads would block the server once full.
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )

        def read_log() -> str:
            log.seek(0)
            return log.read().decode(errors="replace")

        try:
            _wait_ready(process, base_url, log)
            yield base_url, read_log
        finally:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)


def _wait_ready(process: subprocess.Popen[bytes], base_url: str, log: IO[bytes]) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            log.seek(0)
            output = log.read().decode(errors="replace")
            raise ServerFailed(f"server exited with {process.returncode}:\n{output}")
        try:
            if httpx.get(f"{base_url}/api/v1/receipts/keys", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise ServerFailed(f"server at {base_url} not ready within {READY_TIMEOUT} s")


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the ``paycode`` command in a process of its own, as an operator would."""
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/PID/stat after the command name ("state ppid …"), or None for no such process.
    The name may hold spaces and parentheses, so the split is after its last ")"."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()


def peer_ports(pid: int, port: int) -> set[int]:
    """The remote ports of the established IPv4 TCP connections that process ``pid`` holds on
    its local ``port``, read from /proc as ``ss -tp`` would."""
    return _tcp_ports(pid, port, "01")


def listens(pid: int, port: int) -> bool:
    """Whether process ``pid`` holds a socket listening on IPv4 ``port``."""
    return bool(_tcp_ports(pid, port, "0A"))


def _tcp_ports(pid: int, port: int, state: str) -> set[int]:
    # /proc/PID/net/tcp: addresses are hex "IP:PORT"; state 01 is ESTABLISHED, 0A LISTEN.
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    peers = set()
    for line in Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, found, inode = fields[1], fields[2], fields[3], fields[9]
        if found == state and inode in inodes and int(local.split(":")[1], 16) == port:
            peers.add(int(remote.split(":")[1], 16))
    return peers


def children(pid: int) -> set[int]:
    """The live (not yet exited) processes whose parent is ``pid``, as ``ps`` reads them."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields is not None and fields[0] != "Z" and int(fields[1]) == pid:
                found.add(int(entry.name))
    return found


def gone(pid: int) -> bool:
    """The process has exited (reaped, or a zombie waiting to be)."""
    fields = _stat_fields(pid)
    return fields is None or fields[0] == "Z"
