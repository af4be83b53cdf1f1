"""Before/after on one machine: paycode trees (checkouts of two commits, e.g. made with
``git worktree add``) in alternating rounds on one of ``make bench``'s configurations
(SQLite + memory unless ``--config`` names another), so that the machine's drift touches
every tree alike.

    python -m loadtests.compare --trees ../before . --rounds 2 --seconds 10 --rates 200 400 600

Each round starts each tree's server in turn, every other round in reverse order
(``python -m app.cli serve`` run from that tree), on a fresh database, and measures the
100-shop floor of ``loadtests.mall`` (3 devices per account): its saturation, then each
offered rate (``--shops 0``: none); with ``--sale``, the 32-counter sale of
``loadtests.sales`` too. Reported per run: payments/s, server CPU per payment, the
confirmation p50/p99/max and the 503s.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

import uvloop

from loadtests import servers
from loadtests.bench import CONFIGS, backing, mall_phase, saturation_of, shop_floor


def _summary(phase: dict[str, Any]) -> dict[str, Any]:
    confirmed = phase["confirmation_every_device"]
    return {
        "cpu_ms": phase["server_cpu_ms_per_payment"],
        "p50_ms": confirmed["p50_ms"],
        "p99_ms": confirmed["p99_ms"],
        "max_ms": confirmed["max_ms"],
        "refused": phase["refused"],
        "generator_lag_p99_ms": (phase.get("generator_lag") or {}).get("p99_ms"),
    }


async def measure(tree: Path, args: argparse.Namespace) -> dict[str, Any]:
    servers.ROOT = tree
    out: dict[str, Any] = {"tree": str(tree), "config": args.config}
    # The floor as `make bench` measures it, with this tool's phase lengths and rates.
    floor_args = argparse.Namespace(
        shops=args.shops,
        shop_devices=3,
        warmup=args.warmup,
        seconds=args.seconds,
        rate_seconds=args.seconds,
        shop_rates=args.rates,
    )
    with tempfile.TemporaryDirectory() as scratch:
        logs = Path(scratch)
        database, broker, workers = CONFIGS[args.config]
        with backing(database, broker, logs) as (db_url, broker_url):
            server = servers.start_paycode(db_url, broker_url, workers, logs)
            try:
                if args.shops:
                    out.update(await _floor(server, floor_args))
                if args.sale:
                    async with shop_floor(server, 32) as sale_floor:
                        sale = await saturation_of(sale_floor, server, args)
                    out["sale_32"] = {
                        "payments_per_s": sale["payments_per_s"],
                        "cpu_ms": sale["server_cpu_ms_per_payment"],
                    }
            finally:
                server.stop()
    return out


async def _floor(server: servers.Server, floor_args: argparse.Namespace) -> dict[str, Any]:
    shops = await mall_phase(server, floor_args)
    saturation = shops["saturation"]
    return {
        "saturation": {"payments_per_s": saturation["payments_per_s"], **_summary(saturation)},
        "rates": [
            {
                "offered": rate,
                "done_per_s": round(phase["completed"] / floor_args.seconds, 1),
                **_summary(phase),
            }
            for rate, phase in zip(floor_args.shop_rates, shops["rates"], strict=True)
        ],
        "seq_faults": shops["seq_faults"],
    }


async def main_async(args: argparse.Namespace, trees: list[Path]) -> list[dict[str, Any]]:
    runs = []
    for round_no in range(args.rounds):
        # Every other round backwards: whatever a run leaves behind (the database server's
        # checkpoints, a warmer cache) then weighs on every tree alike, not on the later ones.
        for tree in trees if round_no % 2 == 0 else trees[::-1]:
            run = await measure(tree, args)
            run["round"] = round_no
            print(json.dumps(run), flush=True)
            runs.append(run)
    return runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="loadtests.compare", description=__doc__)
    parser.add_argument("--trees", nargs="+", required=True, help="paycode checkouts")
    parser.add_argument("--config", choices=list(CONFIGS), default="sqlite-memory")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=10.0, help="each phase")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--shops", type=int, default=100, help="0: no 100-shop floor")
    parser.add_argument("--rates", type=float, nargs="*", default=[200.0, 400.0, 600.0])
    parser.add_argument("--sale", action="store_true", help="the 32-counter sale too")
    parser.add_argument("--out", help="write every run here as JSON")
    args = parser.parse_args(argv)
    # The generator on uvloop, as ``make bench`` runs it: it shares the cores with the server.
    runs = uvloop.run(main_async(args, [Path(tree).resolve() for tree in args.trees]))
    if args.out:
        Path(args.out).write_text(json.dumps(runs, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
