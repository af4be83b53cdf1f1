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


def _frame(raw: str) -> str:
    # "function (path/to/file.py:123)" -> "function (file.py)": lines split the same function.
    name, _, where = raw.partition(" (")
    file = where.rsplit(":", 1)[0].rsplit("/", 1)[-1] if where else ""
    return f"{name} ({file})" if file else name


def top(collapsed: Path, limit: int = 25) -> dict[str, Any]:
    """Self and inclusive shares of the samples, per function."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [_frame(f) for f in stack.split(";")]
        # py-spy puts the thread as the first frame; the leaf is the last.
        total += n
        own[frames[-1]] += n
        for name in set(frames[1:]):
            inclusive[name] += n

    def share(counter: Counter[str]) -> list[dict[str, Any]]:
        return [
            {"function": k, "share": round(v / total, 4)} for k, v in counter.most_common(limit)
        ]

    return {"samples": total, "self": share(own), "inclusive": share(inclusive)}
