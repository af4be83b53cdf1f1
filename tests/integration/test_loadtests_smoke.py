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
    for name in ("http", "sqlite", "sale"):
        assert results["ceilings"][name]["rate"] > 0
        assert results["ceilings"][name]["p99_ms"] > 0

    # The bare sale ran the same floor as paycode, and every confirmation arrived in seq order.
    sale = results["ceilings"]["sale"]
    assert sale["saturation"]["errors"] == {} and sale["saturation"]["missing_confirmations"] == 0
    assert sale["seq_faults"] == {"gaps": 0, "duplicates": 0, "reconnects": 0}
    assert sale["server_cpu_ms_per_sale"] > 0 and sale["share_of_http"] > 0

    (config,) = results["configs"]
    saturation = config["saturation"]
    assert config["name"] == "sqlite-memory"
    assert saturation["completed"] > 0 and saturation["payments_per_s"] > 0
    # Bounded admission may refuse a sale at once (503) when the machine is slow; nothing else.
    assert set(saturation["errors"]) <= {"code 503", "payment 503"}
    assert saturation["missing_confirmations"] == 0
    assert 0 < saturation["confirmation_every_device"]["p50_ms"] < 10_000
    assert [r["share"] for r in config["rates"]] == [0.25, 0.5, 0.75]
    assert all(r["missing_confirmations"] == 0 for r in config["rates"])
    assert config["seq_faults"] == {"gaps": 0, "duplicates": 0, "reconnects": 0}
    # The books were checked after the run, as `paycode verify` does.
    assert config["books"] == {"problems": 0, "first": []}

    # The many-shops floor: payments by static code, confirmed on payer, payee and agent.
    mall = config["mall"]
    assert mall["shops"] == 4 and mall["devices_per_account"] == 3
    assert mall["saturation"]["completed"] > 0
    assert mall["saturation"]["refused_without_retry_after"] == 0
    assert [r["offered_rate"] for r in mall["rates"]] == [20.0]
    for phase in [mall["saturation"], *mall["rates"]]:
        assert phase["missing_confirmations"] == 0
        assert set(phase["errors"]) == set()
    assert mall["seq_faults"] == {"gaps": 0, "duplicates": 0, "reconnects": 0}

    # The same shops against the bare shop: its floor, and paycode's share of it.
    bare_mall = results["ceilings"]["mall"]
    assert bare_mall["shops"] == 4 and bare_mall["saturation"]["completed"] > 0
    assert [r["offered_rate"] for r in bare_mall["rates"]] == [20.0]
    for phase in [bare_mall["saturation"], *bare_mall["rates"]]:
        assert phase["missing_confirmations"] == 0 and phase["errors"] == {}
    assert bare_mall["seq_faults"] == {"gaps": 0, "duplicates": 0, "reconnects": 0}
    mall_shares = results["bare_mall_shares"]
    assert mall_shares["bare_mall_per_s"] == bare_mall["saturation"]["payments_per_s"]
    expected = mall["saturation"]["payments_per_s"] / bare_mall["saturation"]["payments_per_s"]
    assert mall_shares["sqlite-memory"]["of_bare_mall"] == round(expected, 4)

    shares = results["bare_sale_shares"]
    assert shares["bare_sale_of_bare_post"] == sale["share_of_http"]
    assert shares["sqlite-memory"]["of_bare_sale"] > 0

    idle = results["idle"]
    assert idle["sockets"] == 50
    assert idle["storm_caught_up"] == 50 and idle["gaps"] == 0 and idle["duplicates"] == 0
    assert idle["kib_per_socket"] > 0

    assert {bar["bar"].split(":")[0] for bar in results["bars"]} >= {"sqlite-memory"}
    table = (tmp_path / "results.md").read_text()
    assert "### The bars" in table
    assert "paycode verify after the sqlite-memory run: ok" in table
    assert "### 4 shops, sqlite-memory" in table
    assert "| bare sale (ceiling) |" in table and "of the bare sale" in table
    assert "### 4 shops, the bare floor" in table and "of the bare floor" in table
    # What the machine's other tenants took is shown where a hypervisor counts it.
    stolen = results["configs"][0]["saturation"]["stolen_cpu_share"]
    assert stolen is None or 0 <= stolen <= 1
    assert "load avg (CPU stolen)" in table
    for plot in ("latency.png", "throughput.png"):
        assert (tmp_path / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_compare_measures_each_tree_in_each_round(tmp_path: Path) -> None:
    """``compare`` runs the given checkout's server for every round and reports the floor's
    saturation and each offered rate, with every confirmation delivered in seq order."""
    out = tmp_path / "runs.json"
    args = ["--trees", str(ROOT), "--rounds", "2", "--seconds", "2", "--warmup", "1"]
    args += ["--shops", "4", "--rates", "20", "--out", str(out)]
    done = _run(["loadtests.compare", *args], 180)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    runs = json.loads(out.read_text())
    assert [run["round"] for run in runs] == [0, 1]
    for run in runs:
        assert run["tree"] == str(ROOT)
        assert run["saturation"]["payments_per_s"] > 0 and run["saturation"]["cpu_ms"] > 0
        (rate,) = run["rates"]
        assert rate["offered"] == 20 and rate["done_per_s"] > 0 and rate["p99_ms"] > 0
        assert run["seq_faults"] == {"gaps": 0, "duplicates": 0, "reconnects": 0}


def test_long_sale_reports_each_window_of_one_database() -> None:
    """``long_sale`` sells back to back on one database and reports every window's rate and
    CPU per sale, with every confirmation delivered."""
    args = ["--config", "sqlite-memory", "--windows", "2", "--seconds", "1", "--counters", "4"]
    done = _run(["loadtests.long_sale", *args], 180)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["config"] == "sqlite-memory"
    assert [window["window"] for window in report["windows"]] == [0, 1]
    for window in report["windows"]:
        assert window["sales_per_s"] > 0 and window["server_cpu_ms_per_sale"] > 0
        assert window["database_cpu_ms_per_sale"] is None
        assert window["errors"] == {} and window["missing"] == 0


def test_bare_shop_sells_with_ordered_frames_and_refuses_bad_input(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The bare sale's app speaks the part of the API the floor uses: a payment's events reach
    every socket of the payee and the agent with the next seq, and bad input still gets a 4xx."""
    from starlette.testclient import TestClient

    from loadtests import bare_shop
    from loadtests.servers import ADMIN_TOKEN

    monkeypatch.setattr(bare_shop, "ADMIN_TOKEN", ADMIN_TOKEN)
    client = TestClient(bare_shop.app)
    api, tokens = "/api/v1", {}
    for handle in ("bshop", "bclerk", "bbuyer"):
        body = {"handle": handle, "display_name": handle, "password": "password-123"}
        assert client.post(f"{api}/accounts", json=body).status_code == 201
        login = {"handle": handle, "password": "password-123", "device_name": "d"}
        tokens[handle] = client.post(f"{api}/sessions", json=login).json()["token"]
    assert client.post(f"{api}/accounts", json=body).status_code == 409
    wrong = {"handle": "bbuyer", "password": "nope-nope-nope", "device_name": "d"}
    assert client.post(f"{api}/sessions", json=wrong).status_code == 401
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    deposit = {"handle": "bbuyer", "amount": 5000}
    assert client.post(f"{api}/admin/deposits", json=deposit, headers=admin).status_code == 201
    assert client.post(f"{api}/admin/deposits", json=deposit).status_code == 401
    bad_amount = {"handle": "bbuyer", "amount": 1.5}
    assert client.post(f"{api}/admin/deposits", json=bad_amount, headers=admin).status_code == 422

    def auth(handle: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {tokens[handle]}"}

    agency = client.post(f"{api}/agencies", json={"agent": "bclerk"}, headers=auth("bshop"))
    assert agency.status_code == 201
    items = [{"name": "tea", "quantity": 2, "unit_amount": 300}]
    issue = {"agency_id": agency.json()["id"], "kind": "dynamic", "items": items}
    assert client.post(f"{api}/codes", json={"kind": "dynamic"}).status_code == 401
    no_amount = {**issue, "items": []}
    assert client.post(f"{api}/codes", json=no_amount, headers=auth("bclerk")).status_code == 422
    code = client.post(f"{api}/codes", json=issue, headers=auth("bclerk")).json()
    assert code["amount"] == 600

    with (
        client.websocket_connect(f"{api}/ws", subprotocols=["paycode.v1.json"]) as shop_ws,
        client.websocket_connect(f"{api}/ws", subprotocols=["paycode.v1.json"]) as clerk_ws,
    ):
        welcomes = []
        for ws, handle in ((shop_ws, "bshop"), (clerk_ws, "bclerk")):
            ws.send_json({"type": "hello", "token": tokens[handle], "after": None})
            welcome = ws.receive_json()
            assert welcome["type"] == "welcome"
            welcomes.append(welcome["last_seq"])
        pay_headers = {**auth("bbuyer"), "Idempotency-Key": "k-1"}
        paid = client.post(f"{api}/payments", json={"code": code["token"]}, headers=pay_headers)
        assert paid.status_code == 201 and paid.json()["amount"] == 600
        again = client.post(f"{api}/payments", json={"code": code["token"]}, headers=pay_headers)
        assert again.status_code == 409
        for ws, last in zip((shop_ws, clerk_ws), welcomes, strict=True):
            frames = [ws.receive_json(), ws.receive_json()]
            assert [f["seq"] for f in frames] == [last + 1, last + 2]
            assert [f["event"]["type"] for f in frames] == ["payment.succeeded", "code.paid"]
            assert frames[0]["event"]["data"]["id"] == paid.json()["id"]
    code = client.post(f"{api}/codes", json=issue, headers=auth("bclerk")).json()
    own = client.post(f"{api}/payments", json={"code": code["token"]}, headers=auth("bshop"))
    assert own.status_code == 422 and own.json()["error"]["code"] == "self_payment"
    broke = client.post(f"{api}/payments", content=b"{not json", headers=auth("bbuyer"))
    assert broke.status_code == 400
