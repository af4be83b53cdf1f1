"""Where the server spends its time under load: py-spy samples the serving processes and the
collapsed stacks are reduced to the functions that hold the most samples."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any


def py_spy() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


def start(pid: int, seconds: float, out: Path) -> subprocess.Popen[bytes] | None:
    """Sample ``pid`` for ``seconds`` in the background: only the thread holding the GIL, so
    the profile is where Python spends CPU, not where threads sit waiting."""
    binary = py_spy()
    if binary is None:
        return None
    cmd = [binary, "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", "200"]
    cmd += ["--format", "raw", "--output", str(out), "--gil"]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


# Where a leaf frame's file lives says which layer spends the CPU; first match wins.
LAYERS = (
    ("sqlalchemy/", "SQLAlchemy"),
    ("sqlmodel/", "SQLAlchemy"),
    ("psycopg", "psycopg driver"),
    ("asyncpg/", "asyncpg driver"),
    ("starlette/", "Starlette"),
    ("uvicorn/", "uvicorn (HTTP/WS protocol)"),
    ("websockets/", "websockets"),
    ("anyio/", "thread hops (anyio, threading)"),
    ("threading.py", "thread hops (anyio, threading)"),
    ("queue.py", "thread hops (anyio, threading)"),
    ("concurrent/", "thread hops (anyio, threading)"),
    ("json/", "json"),
    ("msgpack/", "msgpack"),
    ("redis/", "redis client"),
    ("prometheus_client/", "metrics (prometheus_client)"),
    ("cryptography/", "signing (cryptography)"),
    ("argon2/", "password hashing (argon2)"),
    ("asyncio/", "asyncio"),
    ("app/", "paycode app/"),
    ("models/", "paycode models/"),
    ("realtime/", "paycode realtime/"),
)
PAYCODE = ("(app/", "(models/", "(realtime/")


def _layer(raw: str) -> str:
    # py-spy writes paths relative to sys.path: "Session.get (sqlalchemy/orm/session.py:1)".
    where = raw.partition(" (")[2]
    for prefix, layer in LAYERS:
        if where.startswith(prefix):
            return layer
    return "other (stdlib, event loop)"


def _frame(raw: str) -> str:
    # "function (path/to/file.py:123)" -> "function (file.py)": lines split the same function.
    name, _, where = raw.partition(" (")
    file = where.rsplit(":", 1)[0].rsplit("/", 1)[-1] if where else ""
    return f"{name} ({file})" if file else name


def top(collapsed: Path, limit: int = 25) -> dict[str, Any]:
    """Self and inclusive shares of the samples, per function."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    ours: Counter[str] = Counter()
    layers: Counter[str] = Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        raw = stack.split(";")
        frames = [_frame(f) for f in raw]
        total += n
        own[frames[-1]] += n
        layers[_layer(raw[-1])] += n
        for name in set(frames):
            inclusive[name] += n
        for name in {_frame(f) for f in raw if any(m in f for m in PAYCODE)}:
            ours[name] += n

    def share(counter: Counter[str]) -> list[dict[str, Any]]:
        return [
            {"function": k, "share": round(v / total, 4)} for k, v in counter.most_common(limit)
        ]

    return {
        "samples": total,
        "layers": share(layers),
        "self": share(own),
        "inclusive": share(inclusive),
        "paycode_inclusive": share(ours),
    }
