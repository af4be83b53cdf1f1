"""The headline numbers in one run: this machine's ceilings, then paycode on each
configuration, then idle WebSockets — written as JSON, a Markdown table and PNG plots.

    python -m loadtests.bench            # full run, ~15 minutes on 2 cores
    python -m loadtests.bench --quick    # a few seconds per phase, for smoke tests

The harness starts and stops every server itself on free ports of 127.0.0.1. This process is
the load generator: it shares the cores with the server, so its CPU share is reported too.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import psutil

from loadtests import ceilings, idle, mall, profiling, report, servers, shop
from loadtests.sales import Floor, offered, saturate
from models import verify

SHARES = (0.25, 0.5, 0.75)
CONFIGS = {
    # name: (database, broker, workers)
    "sqlite-memory": ("sqlite", "memory", 1),
    "sqlite-redis": ("sqlite", "redis", 1),
    "postgresql-redis-2": ("postgresql", "redis", 2),
}


def machine() -> dict[str, Any]:
    cpu = platform.processor() or "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as info:
        for line in info:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "kernel": platform.release(),
    }


class CpuWatch:
    """CPU seconds of the server tree and of this client process over one phase."""

    def __init__(self, server: servers.Server) -> None:
        self.server = server
        self.me = psutil.Process()

    def __enter__(self) -> CpuWatch:
        self.wall = time.perf_counter()
        self.machine = psutil.cpu_times()
        self.server_cpu = self.server.cpu_seconds()
        times = self.me.cpu_times()
        self.client_cpu = times.user + times.system
        return self

    def __exit__(self, *_exc: object) -> None:
        wall = time.perf_counter() - self.wall
        times = self.me.cpu_times()
        cores = os.cpu_count() or 1
        self.server_used = self.server.cpu_seconds() - self.server_cpu
        self.shares = {
            # Share of the whole machine (all cores), so the two add up to at most 100%.
            "server_cpu_share": self.server_used / wall / cores,
            "client_cpu_share": (times.user + times.system - self.client_cpu) / wall / cores,
            # Other processes on a shared machine: what the server could not get.
            "load_average": round(os.getloadavg()[0], 2),
            # And a virtual machine's host: the share of the cores' time it took for others.
            "stolen_cpu_share": stolen_share(self.machine, psutil.cpu_times()),
        }

    def per_operation_ms(self, count: int) -> float | None:
        """Server CPU per operation: unlike rates, it barely moves when the machine is busy."""
        return round(self.server_used / count * 1000, 3) if count else None


def stolen_share(before: Any, after: Any) -> float | None:
    """The share of the machine's CPU time its hypervisor gave to others between two readings
    of ``psutil.cpu_times()`` (None where the system does not count it)."""
    if not hasattr(before, "steal"):
        return None
    total = sum(after) - sum(before)
    return round((after.steal - before.steal) / total, 3) if total > 0 else None


@contextlib.contextmanager
def backing(database: str, broker: str, logs: Path) -> Iterator[tuple[str, str]]:
    with contextlib.ExitStack() as stack:
        if database == "sqlite":
            db_url = f"sqlite:///{logs / f'paycode-{time.monotonic_ns()}.db'}"
        else:
            db_url = stack.enter_context(servers.pg_database())
        broker_url = (
            stack.enter_context(servers.redis_server(logs)) if broker == "redis" else "memory://"
        )
        yield db_url, broker_url


@contextlib.asynccontextmanager
async def shop_floor(server: servers.Server, counters: int) -> AsyncIterator[Floor]:
    """A shop made through the server's API, with every device's socket open."""
    floor = Floor(server.host, server.port, await shop.build(server.host, server.port, counters))
    await floor.open()
    try:
        yield floor
    finally:
        await floor.close()


async def saturation_of(
    floor: Floor, server: servers.Server, args: argparse.Namespace
) -> dict[str, Any]:
    """Sales back to back after a warm-up, with the server's CPU per sale."""
    await saturate(floor, args.warmup)
    with CpuWatch(server) as cpu:
        saturation = await saturate(floor, args.seconds)
    saturation.update(cpu.shares)
    saturation["server_cpu_ms_per_payment"] = cpu.per_operation_ms(saturation["completed"])
    return saturation


async def run_config(name: str, args: argparse.Namespace, logs: Path) -> dict[str, Any]:
    database, broker, workers = CONFIGS[name]
    with backing(database, broker, logs) as (db_url, broker_url):
        server = servers.start_paycode(db_url, broker_url, workers, logs)
        try:
            async with shop_floor(server, args.counters) as floor:
                saturation = await saturation_of(floor, server, args)
                rates = []
                for share in SHARES:
                    rate = max(1.0, share * saturation["payments_per_s"])
                    result = await offered(floor, rate, args.rate_seconds)
                    rates.append({"share": share, **result})
                mall_result = await mall_phase(server, args) if args.shops else None
                profile = None
                if args.profile:
                    profile = await profile_phase(floor, server, name, args.seconds, logs, args.out)
                faults = floor.seq_faults()
        finally:
            server.stop()
        # The books after everything the run did, overload included (issue 13's bar 4).
        problems = await asyncio.to_thread(verify.check_database, db_url)
    return {
        "name": name,
        "database": database,
        "broker": broker,
        "workers": workers,
        "counters": args.counters,
        "devices_per_account": 2,
        "saturation": saturation,
        "rates": rates,
        "seq_faults": faults,
        "mall": mall_result,
        "profile": profile,
        "books": {"problems": len(problems), "first": problems[:10]},
    }


async def mall_phase(server: servers.Server, args: argparse.Namespace) -> dict[str, Any]:
    """The many-shops floor on the same server: saturation, then each fixed offered rate."""
    built = await mall.build(server.host, server.port, args.shops, args.shop_devices)
    floor = mall.MallFloor(server.host, server.port, built)
    await floor.open()
    try:
        await mall.saturate(floor, args.warmup)
        with CpuWatch(server) as cpu:
            saturation = await mall.saturate(floor, args.seconds)
        saturation.update(cpu.shares)
        saturation["server_cpu_ms_per_payment"] = cpu.per_operation_ms(saturation["completed"])
        rates = []
        for rate in args.shop_rates:
            with CpuWatch(server) as cpu:
                result = await mall.offered(floor, rate, args.rate_seconds)
            result.update(cpu.shares)
            result["server_cpu_ms_per_payment"] = cpu.per_operation_ms(result["completed"])
            rates.append(result)
        faults = floor.seq_faults()
    finally:
        await floor.close()
    return {
        "shops": args.shops,
        "devices_per_account": args.shop_devices,
        "saturation": saturation,
        "rates": rates,
        "seq_faults": faults,
    }


async def profile_phase(
    floor: Floor, server: servers.Server, name: str, seconds: float, logs: Path, out: str
) -> dict[str, Any] | None:
    """A separate saturation run under py-spy, so sampling never colours the measured one."""
    pid = server.worker_pids()[0]
    raw = logs / f"profile-{name}.txt"
    sampler = profiling.start(pid, seconds, raw)
    if sampler is None:
        return None
    await saturate(floor, seconds)
    await asyncio.to_thread(sampler.wait, seconds + 30)
    if not raw.exists():
        return None
    # The collapsed stacks stay beside the report, for flame graphs and a second look.
    await asyncio.to_thread(shutil.copyfile, raw, Path(out) / raw.name)
    return profiling.top(raw)


async def bare_sale(args: argparse.Namespace, logs: Path) -> dict[str, Any]:
    """The sale's framework floor: the same floor, counters, warm-up and saturation as a paycode
    config, against ``loadtests/bare_shop.py`` (no database, hashing, signing or middleware)."""
    server = servers.start_bare_shop(logs)
    try:
        async with shop_floor(server, args.counters) as floor:
            saturation = await saturation_of(floor, server, args)
            faults = floor.seq_faults()
    finally:
        server.stop()
    return ceilings.sale_ceiling(saturation, args.counters, faults)


async def bare_mall(args: argparse.Namespace, logs: Path) -> dict[str, Any]:
    """The many-shops floor's framework floor: the same shops, devices, warm-up, saturation
    and offered rates as a paycode config's ``mall_phase``, against ``loadtests/bare_shop.py``.
    What it cannot exceed on this machine is what no payment path can (bars 1–2 of the
    100-shop floor are judged against it)."""
    server = servers.start_bare_shop(logs)
    try:
        return await mall_phase(server, args)
    finally:
        server.stop()


async def measure_ceilings(args: argparse.Namespace, logs: Path) -> dict[str, Any]:
    found: dict[str, Any] = {}
    base = servers.start_baseline(logs)
    try:
        await ceilings.http_ceiling(base.host, base.port, min(2.0, args.warmup))
        with CpuWatch(base) as cpu:
            found["http"] = await ceilings.http_ceiling(base.host, base.port, args.seconds)
        found["http"].update(cpu.shares)
        found["http"]["server_cpu_ms_per_request"] = cpu.per_operation_ms(found["http"]["count"])
        if args.sockets:
            floor_sockets = min(args.sockets, 2000)
            found["ws_floor"] = await idle.bare_sockets(base, floor_sockets)
    finally:
        base.stop()
    found["sale"] = await bare_sale(args, logs)
    if args.shops:
        found["mall"] = await bare_mall(args, logs)
    if found["http"]["rate"]:
        found["sale"]["share_of_http"] = round(found["sale"]["rate"] / found["http"]["rate"], 4)
    found["sqlite"] = await asyncio.to_thread(ceilings.sqlite_ceiling, args.seconds)
    if "postgresql-redis-2" in args.configs:
        with servers.pg_database() as url:
            found["asyncpg"] = await ceilings.asyncpg_ceiling(url, args.seconds)
    return found


async def run_idle(args: argparse.Namespace, logs: Path) -> dict[str, Any]:
    server = servers.start_paycode(f"sqlite:///{logs / 'paycode-idle.db'}", "memory://", 1, logs)
    try:
        return await idle.idle_sockets(server, args.sockets)
    finally:
        server.stop()


def say(what: str) -> None:
    print(f"bench {time.strftime('%H:%M:%S')}: {what}", file=sys.stderr, flush=True)


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="paycode-bench-") as tmp:
        logs = Path(tmp)
        results: dict[str, Any] = {
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "load_average_at_start": round(os.getloadavg()[0], 2),
            "machine": machine(),
            "settings": {k: v for k, v in vars(args).items() if k != "func"},
            "ceilings": await measure_ceilings(args, logs),
            "configs": [],
        }
        for name in args.configs:
            say(f"{name}")
            results["configs"].append(await run_config(name, args, logs))
        if args.sockets:
            say(f"{args.sockets} idle sockets")
            results["idle"] = await run_idle(args, logs)
    say("done")
    results["bars"] = report.bars(results)
    results["bare_sale_shares"] = report.sale_shares(results)
    results["bare_mall_shares"] = report.mall_shares(results)
    return results


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="loadtests.bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a few seconds per phase")
    parser.add_argument(
        "--configs", nargs="*", choices=list(CONFIGS), default=None, help="none: only ceilings"
    )
    parser.add_argument("--counters", type=int, default=None, help="K counters (tills)")
    parser.add_argument("--seconds", type=float, default=None, help="saturation phase length")
    parser.add_argument("--rate-seconds", type=float, default=None, help="each fixed-rate phase")
    parser.add_argument("--warmup", type=float, default=None)
    parser.add_argument("--sockets", type=int, default=None, help="idle WebSockets (0: skip)")
    parser.add_argument(
        "--shops", type=int, default=None, help="the many-shops floor: N shops (0: skip)"
    )
    parser.add_argument(
        "--shop-rates", type=float, nargs="*", default=None, help="its offered payments/s"
    )
    parser.add_argument("--shop-devices", type=int, default=3, help="devices per account")
    parser.add_argument("--profile", action="store_true", help="sample the server with py-spy")
    parser.add_argument("--out", default="docs/bench", help="where JSON, Markdown and PNGs go")
    parser.add_argument("--no-plots", action="store_true")
    args = parser.parse_args(argv)
    quick = args.quick
    defaults = {
        "configs": ["sqlite-memory"] if quick else list(CONFIGS),
        "counters": 4 if quick else 32,
        "seconds": 1.0 if quick else 20.0,
        "rate_seconds": 1.0 if quick else 15.0,
        "warmup": 0.5 if quick else 3.0,
        "sockets": 100 if quick else 10_000,
        "shops": 4 if quick else 100,
        "shop_rates": [20.0] if quick else [100.0, 200.0, 400.0, 600.0],
    }
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if "postgresql-redis-2" in args.configs and not servers.pg_available():
        parser.error(f"PostgreSQL is not reachable at {servers.PG_ADMIN_URL}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    servers.raise_nofile()
    try:
        import uvloop

        results = uvloop.run(main_async(args))
    except ImportError:
        results = asyncio.run(main_async(args))
    out = Path(args.out)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    table = report.markdown(results)
    (out / "results.md").write_text(table)
    if not args.no_plots:
        report.plots(results, out)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
