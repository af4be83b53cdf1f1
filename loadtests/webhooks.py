"""What webhooks cost a sale (spec §11), measured as ratios within one run.

    python -m loadtests.webhooks            # ~6 minutes on 2 cores
    python -m loadtests.webhooks --quick    # a few seconds per phase, for smoke tests
    python -m loadtests.webhooks --pin      # the server alone on CPU 0, the rest on the others

One ``sqlite-memory`` paycode process and the shop floor of ``loadtests.bench`` (K counters,
2 devices per account, a sale = dynamic code + payment + the frame on all 4 devices), once per
way of sending (``--modes``): by the sender process ``paycode serve`` starts beside itself
(``process``, the default deployment), by the server's own event loop (``server``,
``PAYCODE_WEBHOOK_WORKER=on``), by a ``paycode webhooks`` started on its own (``separate``,
``PAYCODE_WEBHOOK_WORKER=off`` on the server). Phases of each, interleaved so that a drift of
the shared machine touches both sides alike:

  off, on, on, off   saturation (sales back to back, after a warm-up) without and with one
                     webhook endpoint for the payee and for every agent (all event types, so
                     each sale owes 4 deliveries: payment.succeeded and code.paid to each)
  half               sales offered as a Poisson process at half the "on" saturation rate:
                     the time from each payment's commit to the receiver's answer

The receiver is ``loadtests.webhook_sink`` in its own process; its CPU and the client's are
reported with the server's. On a machine of 2 cores they all compete with the server for CPU;
``--pin`` gives the server a core of its own (as a deployment's receiver and sender would not
share the server's cores) and puts the generator, the receiver and a sender process on the
others, the generator ahead of the other two (a niceness of 10 for them: it stands for tills
on devices of their own, and must not be what limits the rate), so that the ratio measures
what webhooks cost the server itself; each phase reports the server's share of its core, which
says whether it was saturated. After each "on" phase the harness waits for every delivery owed
to arrive and reports how long that drain took: a rate the worker could not keep up with would
show there, not in payments/s.

``--other-cores-load`` then measures the machine's own floor of that ratio: saturation
without webhooks, quiet and with the harness's cores kept as busy (CPU only) as the sender
and the receiver kept them, interleaved.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil

from loadtests import profiling, servers, shop
from loadtests.bench import CONFIGS, CpuWatch, backing, machine, shop_floor
from loadtests.sales import Floor, offered, saturate
from loadtests.stats import summarize

EVERY_TYPE = ("payment.succeeded", "code.paid")
BURN_PERIOD = 0.01
# With --pin, the niceness of the processes that share the load generator's cores.
BEHIND_THE_GENERATOR = 10
# A busy loop for a share of every BURN_PERIOD: CPU used on the harness's cores, no more.
_BURN = (
    "import sys, time\n"
    "busy = float(sys.argv[1])\n"
    "while True:\n"
    "    began = time.perf_counter()\n"
    "    while time.perf_counter() - began < busy:\n"
    "        pass\n"
    f"    time.sleep(max(0.0, {BURN_PERIOD} - busy))\n"
)


@contextlib.contextmanager
def other_cores_busy(share_of_a_core: float, *, behind: bool) -> Iterator[None]:
    """A process on the harness's cores (never the server's, with ``--pin``) that keeps one
    of them busy ``share_of_a_core`` of the time: the CPU the sender and the receiver used,
    without them, to tell what the machine loses to a busy neighbour core from what webhooks
    cost the server."""
    busy = min(1.0, share_of_a_core) * BURN_PERIOD
    burner = subprocess.Popen([sys.executable, "-c", _BURN, str(busy)])
    if behind:
        behind_the_generator(burner.pid)
    try:
        yield
    finally:
        burner.kill()
        burner.wait()


def each_thread(pid: int, apply: Callable[[int], None]) -> None:
    """``apply`` to every thread id of ``pid`` (Linux keeps an affinity and a niceness per
    thread, and a new thread inherits its creator's); a thread gone meanwhile is skipped."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(ProcessLookupError):
            apply(int(task.name))


def pin(pid: int, cpus: set[int]) -> None:
    """Every thread of ``pid`` onto ``cpus``."""
    each_thread(pid, lambda thread: os.sched_setaffinity(thread, cpus))


def behind_the_generator(pid: int) -> None:
    """Every thread of ``pid`` runs behind this load generator on the cores they share. The
    generator stands for tills on devices of their own; level with the sender and the
    receiver on one core, it fell behind them and the pinned server waited for it: its core
    88–90 % busy with webhooks on against 95–97 % off, its event loop in ``epoll_wait`` in
    27 % of py-spy's samples. The ratio measured the generator."""
    each_thread(pid, lambda thread: os.setpriority(os.PRIO_PROCESS, thread, BEHIND_THE_GENERATOR))


def start_sink(logs: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = servers.free_port()
    with (logs / "sink.log").open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "loadtests.webhook_sink", "--port", str(port)],
            cwd=servers.ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"http://127.0.0.1:{port}/stats", timeout=1).status_code == 200:
                return proc, port
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError("the webhook sink did not start")


async def set_endpoints(
    base: str, the_shop: shop.Shop, sink: int, hooks: dict[str, str], events: list[str] | None
) -> None:
    """One endpoint for the payee and for each agent (``events``: None for every type);
    ``hooks`` gets each owner's token → endpoint id."""
    owners = [the_shop.payee, *the_shop.agents]
    async with httpx.AsyncClient(base_url=f"{base}/api/v1", timeout=30) as http:
        for n, member in enumerate(owners):
            token = member.tokens[0]
            auth = {"Authorization": f"Bearer {token}"}
            if token not in hooks:
                url = f"http://127.0.0.1:{sink}/hooks/{n}"
                body: dict[str, Any] = {"url": url}
                if events is not None:
                    body["events"] = events
                reply = await http.post("/webhooks", json=body, headers=auth)
                assert reply.status_code == 201, reply.text
                hooks[token] = reply.json()["id"]


async def switch(base: str, the_shop: shop.Shop, hooks: dict[str, str], on: bool) -> None:
    async with httpx.AsyncClient(base_url=f"{base}/api/v1", timeout=30) as http:
        for member in [the_shop.payee, *the_shop.agents]:
            token = member.tokens[0]
            reply = await http.patch(
                f"/webhooks/{hooks[token]}",
                json={"enabled": on},
                headers={"Authorization": f"Bearer {token}"},
            )
            assert reply.status_code == 200, reply.text


def sink_stats(sink: int) -> list[tuple[str, float]]:
    return [
        tuple(d)
        for d in httpx.get(f"http://127.0.0.1:{sink}/stats", timeout=30).json()["deliveries"]
    ]  # type: ignore[misc]


def sink_reset(sink: int) -> None:
    httpx.post(f"http://127.0.0.1:{sink}/reset", timeout=30)


async def drain(sink: int, limit: float = 120) -> float | None:
    """Seconds until the sink's count stopped growing (unchanged for a second), or None past
    ``limit``: how long the deliveries owed took to arrive after the sales stopped."""
    began = time.perf_counter()
    last, since = -1, began
    while time.perf_counter() - began < limit:
        count = len(sink_stats(sink))
        now = time.perf_counter()
        if count != last:
            last, since = count, now
        elif now - since >= 1.0:
            return round(since - began, 2)
        await asyncio.sleep(0.1)
    return None


class Watch(CpuWatch):
    """CpuWatch plus the CPU of the sink and of a ``paycode webhooks`` process."""

    def __init__(
        self, server: servers.Server, sink: subprocess.Popen[bytes], sender: int | None
    ) -> None:
        super().__init__(server)
        self.sink = psutil.Process(sink.pid)
        self.sender = psutil.Process(sender) if sender is not None else None
        # The server's own sender process is in the server's tree, already counted with it.
        tree = psutil.Process(server.proc.pid).children(recursive=True)
        self.sender_in_tree = sender is not None and sender in {child.pid for child in tree}

    @staticmethod
    def _cpu(process: psutil.Process | None) -> float:
        if process is None:
            return 0.0
        times = process.cpu_times()
        return float(times.user + times.system)

    def __enter__(self) -> Watch:
        self.sink_cpu = self._cpu(self.sink)
        self.sender_cpu = self._cpu(self.sender)
        super().__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        wall = time.perf_counter() - self.wall
        super().__exit__(*exc)
        cores = os.cpu_count() or 1
        self.shares["sink_cpu_share"] = (self._cpu(self.sink) - self.sink_cpu) / wall / cores
        sender_used = self._cpu(self.sender) - self.sender_cpu
        self.shares["webhooks_process_cpu_share"] = sender_used / wall / cores
        if self.sender_in_tree:
            # The server's share is the server's alone; its tree's CPU per payment keeps it.
            self.shares["server_cpu_share"] -= sender_used / wall / cores
        else:
            # A sender process is part of the server side: its CPU counts per payment too.
            self.server_used += sender_used


async def saturation(
    floor: Floor,
    server: servers.Server,
    sink: subprocess.Popen[bytes],
    sender: int | None,
    args: argparse.Namespace,
) -> dict[str, Any]:
    await saturate(floor, args.warmup)
    with Watch(server, sink, sender) as cpu:
        result = await saturate(floor, args.seconds)
    result.update(cpu.shares)
    result["server_cpu_ms_per_payment"] = cpu.per_operation_ms(result["completed"])
    return result


async def neighbour_phases(
    floor: Floor,
    server: servers.Server,
    sink: subprocess.Popen[bytes],
    sender: int | None,
    phases: list[dict[str, Any]],
    args: argparse.Namespace,
) -> dict[str, Any]:
    """Saturation without webhooks, quiet and with the other cores kept as busy as the
    sender and the receiver kept them in the "on" phases (interleaved): the machine's own
    floor of the ratio on/off."""
    on = [p for p in phases if p["webhooks"]]
    machine_share = sum(
        p.get("sink_cpu_share", 0.0) + p.get("webhooks_process_cpu_share", 0.0) for p in on
    ) / len(on)
    share_of_a_core = machine_share * (os.cpu_count() or 1)
    rows: list[dict[str, Any]] = []
    for round_ in range(args.rounds):
        for busy in (True, False) if round_ % 2 == 0 else (False, True):
            burner = other_cores_busy(share_of_a_core, behind=args.pin)
            with burner if busy else contextlib.nullcontext():
                result = await saturation(floor, server, sink, sender, args)
            rows.append({"round": round_, "other_cores_busy": busy, **result})

    def mean(busy: bool) -> float:
        chosen = [r["payments_per_s"] for r in rows if r["other_cores_busy"] == busy]
        return sum(chosen) / len(chosen)

    return {
        "busy_share_of_a_core": round(share_of_a_core, 3),
        "phases": rows,
        "ratio_payments_per_s_busy_over_quiet": round(mean(True) / mean(False), 3),
    }


def start_sender(database_url: str, logs: Path) -> subprocess.Popen[bytes]:
    with (logs / "webhooks-process.log").open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "app.cli", "webhooks", "--database-url", database_url],
            cwd=servers.ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


async def fixed_rate(
    floor: Floor,
    server: servers.Server,
    sink_proc: subprocess.Popen[bytes],
    sender: int | None,
    base: str,
    hooks: dict[str, str],
    sink: int,
    on: bool,
    without: list[float],
    args: argparse.Namespace,
) -> dict[str, Any]:
    """Sales offered at 40 % of the saturation without webhooks, endpoints off or on, the
    drain inside the window: the server CPU per payment then includes every delivery the
    sales owed, which saturation phases (where the sender can fall behind) do not."""
    the_shop = floor.shop
    await switch(base, the_shop, hooks, on)
    sink_reset(sink)
    rate = 0.4 * sum(without) / len(without)
    with Watch(server, sink_proc, sender) as cpu:
        result = await offered(floor, rate, args.rate_seconds)
        # The off side waits the same last second the drain waits for its count to settle.
        drained = await drain(sink) if on else await asyncio.sleep(1.0)
    result.update(cpu.shares)
    result["webhooks"] = on
    result["offered_per_s"] = round(rate, 1)
    result["drain_seconds"] = drained
    result["deliveries_received"] = len(sink_stats(sink))
    result["server_cpu_ms_per_payment"] = cpu.per_operation_ms(result["completed"])
    return result


MODES = {
    "process": "the sender process paycode serve starts (the default)",
    "server": "the server's own event loop",
    "separate": "a separate paycode webhooks process",
}


def sender_child(server: servers.Server) -> int:
    """The pid of the ``paycode webhooks`` a server started beside itself."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for child in psutil.Process(server.proc.pid).children():
            if "webhooks" in child.cmdline():
                return int(child.pid)
        time.sleep(0.1)
    raise RuntimeError("the server started no webhook sender")


async def run(args: argparse.Namespace, logs: Path, *, mode: str) -> dict[str, Any]:
    """One server; webhooks sent the way ``mode`` says (``MODES``)."""
    database, broker, workers = CONFIGS[args.config]
    with backing(database, broker, logs) as (database_url, broker_url):
        return await _run(args, logs, database_url, broker_url, workers, mode=mode)


async def _run(
    args: argparse.Namespace,
    logs: Path,
    database_url: str,
    broker_url: str,
    workers: int,
    *,
    mode: str,
) -> dict[str, Any]:
    sink_proc, sink = start_sink(logs)
    os.environ["PAYCODE_WEBHOOK_ALLOW_PRIVATE"] = "1"
    os.environ["PAYCODE_WEBHOOK_WORKER"] = {"process": "process", "server": "on"}.get(mode, "off")
    server = servers.start_paycode(database_url, broker_url, workers, logs)
    if args.pin:
        pin(server.proc.pid, {0})
    sender = start_sender(database_url, logs) if mode == "separate" else None
    # Started by the server before it was moved to CPU 0, the child stays on the others.
    sender_pid = sender_child(server) if mode == "process" else sender.pid if sender else None
    if args.pin:
        for pid in (sink_proc.pid, sender_pid):
            if pid is not None:
                behind_the_generator(pid)
    base = f"http://127.0.0.1:{server.port}"
    phases: list[dict[str, Any]] = []
    loaded: dict[str, Any] | None = None
    profile = None
    try:
        async with shop_floor(server, args.counters) as floor:
            the_shop = floor.shop
            hooks: dict[str, str] = {}
            await set_endpoints(base, the_shop, sink, hooks, args.events)
            for round_ in range(args.rounds):
                # off, on, then on, off: a drift of the machine or the database across the run
                # (PostgreSQL's one hot payee row slows every phase a little) falls on both.
                for on in (False, True) if round_ % 2 == 0 else (True, False):
                    await switch(base, the_shop, hooks, on)
                    sink_reset(sink)
                    result = await saturation(floor, server, sink_proc, sender_pid, args)
                    if on:
                        result["drain_seconds"] = await drain(sink)
                    result["deliveries_received"] = len(sink_stats(sink))
                    phases.append({"round": round_, "webhooks": on, **result})
            if args.other_cores_load:
                await switch(base, the_shop, hooks, False)
                loaded = await neighbour_phases(floor, server, sink_proc, sender_pid, phases, args)
            if args.profile and mode == "server":
                await switch(base, the_shop, hooks, True)
                out = logs / "profile-webhooks.txt"
                spy = profiling.start(server.proc.pid, args.seconds, out)
                await saturate(floor, args.seconds)
                if spy is not None:
                    spy.wait(timeout=60)
                    profile = profiling.top(out)
                await drain(sink)
            without = [p["payments_per_s"] for p in phases if not p["webhooks"]]
            steady = []
            for on in (False, True, False, True):
                steady.append(
                    await fixed_rate(
                        floor, server, sink_proc, sender_pid, base, hooks, sink, on, without, args
                    )
                )
            with_hooks = [p["payments_per_s"] for p in phases if p["webhooks"]]
            rate = 0.5 * sum(with_hooks) / len(with_hooks)
            await switch(base, the_shop, hooks, True)
            await asyncio.sleep(1)
            sink_reset(sink)
            half = await offered(floor, rate, args.rate_seconds)
            half["drain_seconds"] = await drain(sink)
            seen = sink_stats(sink)
            half["commit_to_receiver_answer"] = summarize(
                [t for kind, t in seen if kind == "payment.succeeded"], args.rate_seconds
            )
            half["deliveries_received"] = len(seen)
            # A sale writes payment.succeeded and code.paid to the payee and to the agent.
            wanted = {"payment.succeeded", "code.paid"} & set(args.events or EVERY_TYPE)
            half["deliveries_owed"] = 2 * len(wanted) * half["completed"]
    finally:
        server.stop()
        if sender is not None:
            sender.terminate()
            sender.wait(timeout=20)
        sink_proc.terminate()
        sink_proc.wait(timeout=15)
    off = [p for p in phases if not p["webhooks"]]
    on = [p for p in phases if p["webhooks"]]

    def mean(rows: list[dict[str, Any]], key: str) -> float:
        return sum(r[key] for r in rows) / len(rows)

    steady_off = [p for p in steady if not p["webhooks"]]
    steady_on = [p for p in steady if p["webhooks"]]
    return {
        "webhooks_sent_by": MODES[mode],
        "phases": phases,
        "fixed_rate": steady,
        "fixed_rate_cpu_ms_per_payment_off_on": [
            round(mean(steady_off, "server_cpu_ms_per_payment"), 3),
            round(mean(steady_on, "server_cpu_ms_per_payment"), 3),
        ],
        "half_saturation": half,
        "profile_with_webhooks": profile,
        "other_cores_load_without_webhooks": loaded,
        "ratio_payments_per_s_on_over_off": round(
            mean(on, "payments_per_s") / mean(off, "payments_per_s"), 3
        ),
        "ratio_cpu_ms_per_payment_on_over_off": round(
            mean(on, "server_cpu_ms_per_payment") / mean(off, "server_cpu_ms_per_payment"), 3
        ),
    }


async def run_all(args: argparse.Namespace, logs: Path) -> dict[str, Any]:
    runs = [await run(args, logs, mode=mode) for mode in args.modes]
    return {
        "machine": machine(),
        "load_average_at_start": args.load_at_start,
        "load_average_at_end": round(os.getloadavg()[0], 2),
        "config": args.config,
        "counters": args.counters,
        "seconds": args.seconds,
        "endpoint_events": args.events or "all types",
        "pinned": (
            "the server on CPU 0, the rest on the others; the receiver, a sender process and"
            f" the busy loop at niceness {BEHIND_THE_GENERATOR}, behind the load generator"
            if args.pin
            else None
        ),
        "runs": runs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--counters", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--warmup", type=float, default=3)
    parser.add_argument("--rate-seconds", type=float, default=15)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--profile", action="store_true", help="a py-spy run with webhooks on")
    parser.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES))
    parser.add_argument("--in-process-only", action="store_true", help="--modes server")
    parser.add_argument("--separate-only", action="store_true", help="--modes separate")
    parser.add_argument("--config", choices=sorted(CONFIGS), default="sqlite-memory")
    parser.add_argument(
        "--events", nargs="+", default=None, help="the endpoints' event types (default: all)"
    )
    parser.add_argument(
        "--pin",
        action="store_true",
        help="the server alone on CPU 0; this load generator, the receiver and a sender"
        " process on the other CPUs, the generator ahead of the others (one server process"
        " only)",
    )
    parser.add_argument(
        "--other-cores-load",
        action="store_true",
        help="then, without webhooks, saturation with the other cores kept as busy as the"
        " sender and the receiver kept them, against quiet: the machine's floor of the ratio",
    )
    parser.add_argument("--out", default="docs/bench/webhooks.json")
    args = parser.parse_args()
    if args.pin:
        if CONFIGS[args.config][2] != 1 or (os.cpu_count() or 1) < 2:
            parser.error("--pin needs a one-process configuration and at least 2 CPUs")
        # Inherited by every process started from here on; the server is moved to CPU 0.
        os.sched_setaffinity(0, set(range(1, os.cpu_count() or 2)))
    if args.in_process_only or args.separate_only:
        args.modes = ["server"] if args.in_process_only else ["separate"]
    if args.quick:
        args.counters, args.seconds, args.warmup, args.rate_seconds, args.rounds = 8, 3, 1, 3, 1
    args.load_at_start = round(os.getloadavg()[0], 2)
    servers.raise_nofile()
    with tempfile.TemporaryDirectory(prefix="paycode-bench-webhooks-") as logs:
        result = asyncio.run(run_all(args, Path(logs)))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    cores = os.cpu_count() or 1
    for run_ in result["runs"]:
        print(f"webhooks sent by {run_['webhooks_sent_by']}:")
        for phase in run_["phases"]:
            print(
                f"  round {phase['round']} webhooks={'on ' if phase['webhooks'] else 'off'} "
                f"{phase['payments_per_s']} payments/s, "
                f"{phase['server_cpu_ms_per_payment']} ms server CPU/payment, "
                f"server busy {phase['server_cpu_share'] * cores:.0%} of a core, "
                f"drain {phase.get('drain_seconds')} s"
            )
        for phase in run_["fixed_rate"]:
            print(
                f"  {phase['offered_per_s']}/s offered, webhooks="
                f"{'on ' if phase['webhooks'] else 'off'} {phase['completed']} payments, "
                f"{phase['server_cpu_ms_per_payment']} ms server CPU/payment "
                f"(deliveries drained inside), {phase['deliveries_received']} deliveries"
            )
        loaded = run_["other_cores_load_without_webhooks"]
        if loaded is not None:
            print(
                f"  without webhooks, other cores {loaded['busy_share_of_a_core']} of a core busy"
                f" / quiet: {loaded['ratio_payments_per_s_busy_over_quiet']} ("
                + ", ".join(
                    f"{'busy' if r['other_cores_busy'] else 'quiet'} {r['payments_per_s']}"
                    for r in loaded["phases"]
                )
                + ")"
            )
        half = run_["half_saturation"]
        print(
            f"  ratio on/off {run_['ratio_payments_per_s_on_over_off']}, half saturation "
            f"{half['offered_rate']}/s: commit->receiver {half['commit_to_receiver_answer']}, "
            f"{half['deliveries_received']}/{half['deliveries_owed']} deliveries"
        )


if __name__ == "__main__":
    main()
