"""Whether a sale keeps its pace as the tables grow: the 32-counter sale run back to back for
several windows on one database, each window's sales/s with the server's and the database
server's CPU per sale. Every sale issues a code, so the code table grows by the window's
sales; a statement whose plan reads the whole table shows as a rate that falls from window to
window.

    python -m loadtests.long_sale --config postgresql-redis-2 --windows 6 --seconds 10
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import psutil

from loadtests import servers
from loadtests.bench import CONFIGS, CpuWatch, backing, shop_floor
from loadtests.sales import saturate


def _database_cpu() -> float:
    """CPU seconds of every PostgreSQL process of the machine (its backends serve the run)."""
    total = 0.0
    for proc in psutil.process_iter(["name"]):
        if "postgres" in (proc.info["name"] or ""):
            with contextlib.suppress(psutil.NoSuchProcess):
                times = proc.cpu_times()
                total += times.user + times.system
    return total


async def run(config: str, windows: int, seconds: float, counters: int) -> list[dict[str, Any]]:
    database, broker, workers = CONFIGS[config]
    logs = Path(tempfile.mkdtemp(prefix="paycode-long-sale-"))
    out: list[dict[str, Any]] = []
    with backing(database, broker, logs) as (db_url, broker_url):
        server = servers.start_paycode(db_url, broker_url, workers, logs)
        try:
            async with shop_floor(server, counters) as floor:
                await saturate(floor, 2)
                for window in range(windows):
                    database_before = _database_cpu()
                    with CpuWatch(server) as cpu:
                        result = await saturate(floor, seconds)
                    sales = result["completed"]
                    database_used = _database_cpu() - database_before
                    out.append(
                        {
                            "window": window,
                            "sales_per_s": result["payments_per_s"],
                            "server_cpu_ms_per_sale": cpu.per_operation_ms(sales),
                            "database_cpu_ms_per_sale": round(database_used / sales * 1000, 3)
                            if database == "postgresql" and sales
                            else None,
                            "errors": result["errors"],
                            "missing": result["missing_confirmations"],
                        }
                    )
        finally:
            server.stop()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="loadtests.long_sale", description=__doc__)
    parser.add_argument("--config", choices=list(CONFIGS), default="postgresql-redis-2")
    parser.add_argument("--windows", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=10.0, help="each window")
    parser.add_argument("--counters", type=int, default=32)
    args = parser.parse_args(argv)
    if CONFIGS[args.config][0] == "postgresql" and not servers.pg_available():
        parser.error(f"PostgreSQL is not reachable at {servers.PG_ADMIN_URL}")
    servers.raise_nofile()
    windows = asyncio.run(run(args.config, args.windows, args.seconds, args.counters))
    print(json.dumps({"config": args.config, "windows": windows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
