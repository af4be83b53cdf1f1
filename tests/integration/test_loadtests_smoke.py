"""The load test and the benchmark still run end to end against a real server subprocess:
a few seconds of each, checked for failures and for sane, complete results."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def _run(args: list[str], limit: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=limit
    )


def test_locust_shop_floor_confirms_sales_without_failures(tmp_path: Path) -> None:
    """A short headless Locust run of counters, payers and a dashboard: no request or stream
    check fails, and at least one counter confirmation is recorded as a WS request."""
    prefix = tmp_path / "run"
    args = ["--users", "6", "--spawn-rate", "6", "--duration", "5s", "--csv", str(prefix)]
    done = _run(["loadtests.run_locust", *args], 90)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    with open(f"{prefix}_stats.csv", newline="") as stats_file:
        rows = {(r["Type"], r["Name"]): r for r in csv.DictReader(stats_file)}
    total = rows[("", "Aggregated")]
    assert int(total["Failure Count"]) == 0, Path(f"{prefix}_failures.csv").read_text()
    assert int(rows[("WS", "confirmation")]["Request Count"]) >= 1
    assert int(rows[("POST", "/payments")]["Request Count"]) >= 1
    assert ("WS", "seq gap") not in rows


def test_bench_quick_writes_complete_sane_results(tmp_path: Path) -> None:
    """``bench --quick`` measures the ceilings and one configuration, holds idle sockets
    through a reconnect storm, and writes JSON, Markdown and both plots with sane figures."""
    done = _run(["loadtests.bench", "--quick", "--sockets", "50", "--out", str(tmp_path)], 120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())

    assert results["machine"]["nproc"] >= 1
    for name in ("http", "sqlite"):
        assert results["ceilings"][name]["rate"] > 0
        assert results["ceilings"][name]["p99_ms"] > 0

    (config,) = results["configs"]
    saturation = config["saturation"]
    assert config["name"] == "sqlite-memory"
    assert saturation["completed"] > 0 and saturation["payments_per_s"] > 0
    assert saturation["errors"] == {} and saturation["missing_confirmations"] == 0
    assert 0 < saturation["confirmation_every_device"]["p50_ms"] < 10_000
    assert [r["share"] for r in config["rates"]] == [0.25, 0.5, 0.75]
    assert all(r["missing_confirmations"] == 0 for r in config["rates"])
    assert config["seq_faults"] == {"gaps": 0, "duplicates": 0, "reconnects": 0}

    idle = results["idle"]
    assert idle["sockets"] == 50
    assert idle["storm_caught_up"] == 50 and idle["gaps"] == 0 and idle["duplicates"] == 0
    assert idle["kib_per_socket"] > 0

    assert {bar["bar"].split(":")[0] for bar in results["bars"]} >= {"sqlite-memory"}
    assert "### The bars" in (tmp_path / "results.md").read_text()
    for plot in ("latency.png", "throughput.png"):
        assert (tmp_path / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
