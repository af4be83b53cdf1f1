"""A run's results as the bars of the issue, a Markdown report and PNG plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

BAR_SHARE_OF_HTTP = 0.25
BAR_SHARE_OF_ASYNCPG = 0.70
BAR_P99_MS = 20.0
BAR_P999_MS = 50.0
BAR_SOCKETS = 10_000
BAR_KIB_PER_SOCKET = 30.0


def rated(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The ceilings that are rates (the WebSocket floor is memory, reported with idle)."""
    return [c for c in results["ceilings"].values() if "rate" in c]


def _config(results: dict[str, Any], name: str) -> dict[str, Any] | None:
    return next((c for c in results["configs"] if c["name"] == name), None)


def _at_half(config: dict[str, Any]) -> dict[str, Any] | None:
    return next((r for r in config["rates"] if r["share"] == 0.5), None)


def _cpu_per_op(ceiling: dict[str, Any]) -> float | None:
    return ceiling.get("server_cpu_ms_per_request") or ceiling.get("server_cpu_ms_per_sale")


def sale_shares(results: dict[str, Any]) -> dict[str, Any]:
    """How much of the 25% bar the stack allows at all (the bare sale against the bare POST),
    and how far each paycode configuration is from the bare sale, by rate and by server CPU."""
    ceilings = results["ceilings"]
    sale, http = ceilings.get("sale"), ceilings.get("http")
    if not sale or not sale.get("rate"):
        return {}
    out: dict[str, Any] = {"bare_sale_per_s": sale["rate"]}
    sale_cpu = sale.get("server_cpu_ms_per_sale")
    if http and http.get("rate"):
        out["bare_sale_of_bare_post"] = round(sale["rate"] / http["rate"], 4)
        http_cpu = http.get("server_cpu_ms_per_request")
        if http_cpu and sale_cpu:
            out["bare_sale_of_bare_post_by_cpu"] = round(http_cpu / sale_cpu, 4)
    for c in results["configs"]:
        out[c["name"]] = _share_of(c["saturation"], sale["rate"], sale_cpu, "bare_sale")
    return out


def _share_of(
    saturation: dict[str, Any], floor_rate: float, floor_cpu: float | None, floor: str
) -> dict[str, Any]:
    """A paycode saturation as a share of a floor's: by rate, and by server CPU per payment."""
    paycode_cpu = saturation.get("server_cpu_ms_per_payment")
    return {
        f"of_{floor}": round(saturation["payments_per_s"] / floor_rate, 4),
        f"of_{floor}_by_cpu": round(floor_cpu / paycode_cpu, 4)
        if floor_cpu and paycode_cpu
        else None,
    }


def mall_shares(results: dict[str, Any]) -> dict[str, Any]:
    """Each configuration's many-shops saturation against the bare floor's on the same shops,
    by rate and by server CPU: how far the payment path is from the framework's own cost."""
    bare = results["ceilings"].get("mall")
    if not bare or not bare["saturation"]["payments_per_s"]:
        return {}
    floor = bare["saturation"]
    floor_cpu = floor.get("server_cpu_ms_per_payment")
    out: dict[str, Any] = {
        "shops": bare["shops"],
        "bare_mall_per_s": floor["payments_per_s"],
        "bare_mall_cpu_ms_per_payment": floor_cpu,
    }
    for c in results["configs"]:
        if c.get("mall"):
            saturation = c["mall"]["saturation"]
            out[c["name"]] = _share_of(saturation, floor["payments_per_s"], floor_cpu, "bare_mall")
    return out


def _mall_share_notes(results: dict[str, Any]) -> list[str]:
    shares = results.get("bare_mall_shares") or mall_shares(results)
    if not shares:
        return []
    lines = [
        "",
        f"Bare {shares['shops']}-shop floor (the framework's cost of a payment by static code "
        f"and its frames to every device, no product logic): {shares['bare_mall_per_s']}/s at "
        f"{shares['bare_mall_cpu_ms_per_payment']} ms of server CPU per payment.",
    ]
    for c in results["configs"]:
        mine = shares.get(c["name"])
        if not mine:
            continue
        by_cpu = mine.get("of_bare_mall_by_cpu")
        rate = c["mall"]["saturation"]["payments_per_s"]
        lines.append(
            f"paycode {c['name']}, {shares['shops']} shops: {rate}/s = "
            f"**{mine['of_bare_mall']:.1%} of the bare floor**"
            + (f" (by server CPU: {by_cpu:.1%})" if by_cpu else "")
            + "."
        )
    return lines


def _share_notes(results: dict[str, Any]) -> list[str]:
    shares = results.get("bare_sale_shares") or sale_shares(results)
    if not shares:
        return []
    lines = [""]
    if "bare_sale_of_bare_post" in shares:
        of_post = shares["bare_sale_of_bare_post"]
        by_cpu = shares.get("bare_sale_of_bare_post_by_cpu")
        lines.append(
            f"Bare sale (the framework floor of a sale, no product logic): "
            f"{shares['bare_sale_per_s']}/s = **{of_post:.1%} of the bare POST**"
            + (f" (by server CPU: {by_cpu:.1%})" if by_cpu else "")
            + f", so at most {min(of_post / BAR_SHARE_OF_HTTP, 1.0):.0%} of the 25% bar "
            "is reachable on this stack at all."
        )
    for c in results["configs"]:
        mine = shares.get(c["name"])
        if not mine:
            continue
        by_cpu = mine.get("of_bare_sale_by_cpu")
        lines.append(
            f"paycode {c['name']}: {c['saturation']['payments_per_s']}/s = "
            f"**{mine['of_bare_sale']:.1%} of the bare sale**"
            + (f" (by server CPU: {by_cpu:.1%})" if by_cpu else "")
            + "."
        )
    return lines


def bars(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each bar of the issue with its target, what this run measured, and whether it is met."""
    out: list[dict[str, Any]] = []
    ceilings = results["ceilings"]
    one = _config(results, "sqlite-memory")
    if one and "http" in ceilings:
        sat = one["saturation"]
        target = BAR_SHARE_OF_HTTP * ceilings["http"]["rate"]
        delivered = sat["missing_confirmations"] == 0 and not sat["errors"]
        per_request = ceilings["http"].get("server_cpu_ms_per_request")
        per_payment = sat.get("server_cpu_ms_per_payment")
        cpu_ratio = (
            f"; by server CPU: {per_request / per_payment:.1%}"
            if per_request and per_payment
            else ""
        )
        out.append(
            {
                "bar": "SQLite+memory, 1 process: payments/s >= 25% of bare Starlette POST/s, "
                "every confirmation delivered",
                "target": f">= {target:.0f}/s",
                "measured": f"{sat['payments_per_s']}/s "
                f"({sat['payments_per_s'] / ceilings['http']['rate']:.1%}), "
                f"missing {sat['missing_confirmations']}{cpu_ratio}",
                "met": sat["payments_per_s"] >= target and delivered,
            }
        )
    for config in results["configs"]:
        half = _at_half(config)
        if half is None:
            continue
        lat = half["confirmation_every_device"]
        p99, p999 = lat["p99_ms"], lat["p999_ms"]
        out.append(
            {
                "bar": f"{config['name']}: confirmation p99 <= 20 ms, p99.9 <= 50 ms "
                "at 50% of saturation",
                "target": "p99 <= 20 ms, p99.9 <= 50 ms",
                "measured": f"p99 {p99} ms, p99.9 {p999} ms ({lat['count']} payments)",
                "met": p99 is not None
                and p999 is not None
                and p99 <= BAR_P99_MS
                and p999 <= BAR_P999_MS,
            }
        )
    pg = _config(results, "postgresql-redis-2")
    if pg and "asyncpg" in ceilings:
        rate = pg["saturation"]["payments_per_s"]
        target = BAR_SHARE_OF_ASYNCPG * ceilings["asyncpg"]["rate"]
        out.append(
            {
                "bar": "PostgreSQL+Redis, 2 processes: payments/s >= 70% of raw asyncpg tx/s",
                "target": f">= {target:.0f}/s",
                "measured": f"{rate}/s ({rate / ceilings['asyncpg']['rate']:.1%})",
                "met": rate >= target,
            }
        )
    idle = results.get("idle")
    if idle:
        storm_ok = (
            idle.get("storm_caught_up") == idle["sockets"]
            and idle.get("gaps") == 0
            and idle.get("duplicates") == 0
        )
        out.append(
            {
                "bar": "10,000 idle WebSockets in one process at <= 30 KiB each; a reconnect "
                "storm of all of them replayed gaplessly",
                "target": f"{BAR_SOCKETS} sockets, <= {BAR_KIB_PER_SOCKET} KiB, all caught up",
                "measured": f"{idle['sockets']} sockets, {idle['kib_per_socket']} KiB each, "
                f"storm {idle.get('storm_seconds')} s, caught up {idle.get('storm_caught_up')}, "
                f"gaps {idle.get('gaps')}",
                "met": idle["sockets"] >= BAR_SOCKETS
                and idle["kib_per_socket"] <= BAR_KIB_PER_SOCKET
                and storm_ok,
            }
        )
    return out


def _row(cells: list[Any]) -> str:
    return "| " + " | ".join("" if c is None else str(c) for c in cells) + " |"


def _load(phase: dict[str, Any]) -> str:
    """The load average, and the share of the cores' time a virtual machine's host took."""
    stolen = phase.get("stolen_cpu_share")
    load = phase.get("load_average")
    return f"{load} ({stolen:.0%})" if stolen is not None else str(load)


def markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    lines = [
        f"Run {results['date']} on {m['nproc']} × {m['cpu']}, {m['memory_gib']} GiB, "
        f"Python {m['python']}; client: one separate asyncio process on the same box; "
        f"load average at start {results.get('load_average_at_start')}.",
        "",
        "### Ceilings of this machine (same run)",
        "",
        _row(["path", "rate/s", "p50 ms", "p99 ms", "p99.9 ms", "server CPU ms/op"]),
        _row(["---"] * 6),
    ]
    for ceiling in rated(results):
        lines.append(
            _row(
                [
                    ceiling["name"],
                    ceiling["rate"],
                    ceiling["p50_ms"],
                    ceiling["p99_ms"],
                    ceiling["p999_ms"],
                    _cpu_per_op(ceiling),
                ]
            )
        )
    if "sale" in results["ceilings"]:
        lines += [
            "",
            "The bare sale (`loadtests/bare_shop.py`) runs the same floor as paycode below: its "
            "rate is sales/s, its percentiles are commit → every device, its CPU is per sale.",
        ]
    http = results["ceilings"].get("http", {}).get("rate")
    lines += [
        "",
        "### Saturation (closed loop: each counter issues a dynamic code, the payer pays it, "
        "the counter waits for the confirmation on every device)",
        "",
        _row(
            [
                "config",
                "counters",
                "payments/s",
                "÷ bare POST",
                "code POST p50/p99 ms",
                "payment POST p50/p99 ms",
                "errors",
                "missing",
                "server CPU",
                "client CPU",
                "server CPU ms/payment",
                "load avg (CPU stolen)",
            ]
        ),
        _row(["---"] * 12),
    ]
    sale = results["ceilings"].get("sale")
    rows = [(c["name"], c["counters"], c["saturation"]) for c in results["configs"]]
    if sale:
        rows.insert(0, ("bare sale (ceiling)", results["settings"]["counters"], sale["saturation"]))
    for name, counters, s in rows:
        lines.append(
            _row(
                [
                    name,
                    counters,
                    s["payments_per_s"],
                    f"{s['payments_per_s'] / http:.1%}" if http else "",
                    f"{s['code_http']['p50_ms']} / {s['code_http']['p99_ms']}",
                    f"{s['payment_http']['p50_ms']} / {s['payment_http']['p99_ms']}",
                    sum(s["errors"].values()),
                    s["missing_confirmations"],
                    f"{s['server_cpu_share']:.0%}",
                    f"{s['client_cpu_share']:.0%}",
                    s.get("server_cpu_ms_per_payment"),
                    _load(s),
                ]
            )
        )
    lines += [
        "",
        "### Confirmation latency: payment commit (its `created_at`) → frame on every device "
        "of the agent and the payee",
        "",
        _row(
            [
                "config",
                "share",
                "offered/s",
                "achieved/s",
                "p50 ms",
                "p99 ms",
                "p99.9 ms",
                "max ms",
                "missing",
                "late starts",
            ]
        ),
        _row(["---"] * 10),
    ]
    for c in results["configs"]:
        for r in c["rates"]:
            lat = r["confirmation_every_device"]
            lines.append(
                _row(
                    [
                        c["name"],
                        f"{r['share']:.0%}",
                        r["offered_rate"],
                        r["payments_per_s"],
                        lat["p50_ms"],
                        lat["p99_ms"],
                        lat["p999_ms"],
                        lat["max_ms"],
                        r["missing_confirmations"],
                        r["late_starts"],
                    ]
                )
            )
    idle = results.get("idle")
    floor = results["ceilings"].get("ws_floor")
    if floor:
        lines += [
            "",
            f"Floor: {floor['name']}: {floor['kib_per_socket']} KiB per socket "
            f"({floor['connect_seconds']} s to connect).",
        ]
    if idle:
        lines += [
            "",
            "### Idle WebSockets on one process (SQLite + memory broker)",
            "",
            _row(
                [
                    "sockets",
                    "connect s",
                    "KiB/socket",
                    "fan-out of 1 event s",
                    "storm s",
                    "caught up",
                    "failed attempts",
                    "gaps",
                    "duplicates",
                ]
            ),
            _row(["---"] * 9),
            _row(
                [
                    idle["sockets"],
                    idle["connect_seconds"],
                    idle["kib_per_socket"],
                    idle.get("fanout_seconds"),
                    idle.get("storm_seconds"),
                    idle.get("storm_caught_up"),
                    idle.get("storm_failed_attempts"),
                    idle.get("gaps"),
                    idle.get("duplicates"),
                ]
            ),
        ]
    lines += _mall_lines(results)
    lines += ["", "### The bars", "", _row(["bar", "target", "measured", "met"])]
    lines.append(_row(["---"] * 4))
    for bar in results["bars"]:
        lines.append(
            _row([bar["bar"], bar["target"], bar["measured"], "yes" if bar["met"] else "**no**"])
        )
    lines += _share_notes(results)
    lines += _mall_share_notes(results)
    lines += _books_notes(results)
    return "\n".join(lines) + "\n"


def _books_notes(results: dict[str, Any]) -> list[str]:
    """``paycode verify``'s verdict on each configuration's database after its run."""
    lines = []
    for c in results["configs"]:
        books = c.get("books")
        if books is None:
            continue
        verdict = (
            "ok (ledger balanced, balances match it, money conserved, events gapless)"
            if books["problems"] == 0
            else f"**{books['problems']} problems**: " + "; ".join(books["first"])
        )
        lines.append(f"paycode verify after the {c['name']} run: {verdict}.")
    return ["", *lines] if lines else []


def _mall_lines(results: dict[str, Any]) -> list[str]:
    """The many-shops floor: payments by static code at fixed offered rates, open loop; the
    bare floor first, when the run measured it."""
    lines: list[str] = []
    bare = results["ceilings"].get("mall")
    if bare:
        lines += _mall_table(bare, "the bare floor (`loadtests/bare_shop.py`, no product logic)")
    for c in results["configs"]:
        if c.get("mall"):
            lines += _mall_table(c["mall"], c["name"])
    return lines


def _mall_table(mall: dict[str, Any], name: str) -> list[str]:
    sat = mall["saturation"]
    lines = [
        "",
        f"### {mall['shops']} shops, {name}: payer, payee and agent on "
        f"{mall['devices_per_account']} devices each (latency: POST written → the frame on "
        "every one of their devices)",
        "",
        _row(
            [
                "offered/s",
                "completed/s",
                "p50 / p99 / p99.9 ms",
                "payment POST p99 ms",
                "503 (slowest answer ms)",
                "missing",
                "server CPU ms/payment",
                "generator's loop late p99 ms",
                "load avg (CPU stolen)",
            ]
        ),
        _row(["---"] * 9),
    ]
    for r in [*mall["rates"], {**sat, "offered_rate": "saturation"}]:
        conf = r["confirmation_every_device"]
        generator_lag = r.get("generator_lag") or {}
        lines.append(
            _row(
                [
                    r["offered_rate"],
                    r["payments_per_s"],
                    f"{conf['p50_ms']} / {conf['p99_ms']} / {conf['p999_ms']}",
                    r["payment_http"]["p99_ms"],
                    f"{r['refused']} ({r['refused_http']['max_ms']})",
                    r["missing_confirmations"],
                    r.get("server_cpu_ms_per_payment"),
                    generator_lag.get("p99_ms"),
                    _load(r),
                ]
            )
        )
    faults = mall["seq_faults"]
    lines.append(
        f"\nseq gaps {faults['gaps']}, duplicates {faults['duplicates']}, "
        f"reconnects {faults['reconnects']}."
    )
    return lines


def plots(results: dict[str, Any], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    written: list[Path] = []
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for n, c in enumerate(results["configs"]):
        xs = [r["offered_rate"] for r in c["rates"]]
        # One colour per configuration, one line style per percentile.
        for key, style in (("p50_ms", ":"), ("p99_ms", "-"), ("p999_ms", "--")):
            ys = [r["confirmation_every_device"][key] for r in c["rates"]]
            label = f"{c['name']} {key[:-3].replace('p999', 'p99.9')}"
            ax.plot(xs, ys, style, color=f"C{n}", marker="o", label=label)
    ax.axhline(BAR_P99_MS, color="grey", linewidth=0.8)
    ax.axhline(BAR_P999_MS, color="grey", linewidth=0.8, linestyle="--")
    ax.set_xlabel("offered payments/s")
    ax.set_ylabel("commit → every device, ms")
    ax.set_yscale("log")
    ax.set_title("Confirmation latency vs offered load")
    if results["configs"]:
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = out / "latency.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)

    # Wide enough for the long ceiling names and the title beside them.
    fig, ax = plt.subplots(figsize=(9, 4.5))
    names = [ceiling["name"] for ceiling in rated(results)]
    rates = [ceiling["rate"] for ceiling in rated(results)]
    names += [f"paycode {c['name']}" for c in results["configs"]]
    rates += [c["saturation"]["payments_per_s"] for c in results["configs"]]
    # The bare sale is a ceiling too, but the one paycode's sale is compared with first.
    colours = ["#79c" if c is results["ceilings"].get("sale") else "#999" for c in rated(results)]
    ax.barh(names, rates, color=colours + ["#2a7"] * len(results["configs"]))
    http = results["ceilings"].get("http", {}).get("rate")
    if http:
        ax.axvline(BAR_SHARE_OF_HTTP * http, color="C3", linestyle="--", linewidth=0.8)
        ax.text(BAR_SHARE_OF_HTTP * http, -0.6, " 25% bar", color="C3", fontsize=7, va="bottom")
    ax.set_xscale("log")
    # A short log axis labels its minor ticks too, and they overlap.
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("per second (log)")
    ax.set_title("Payments/s against this machine's ceilings")
    fig.tight_layout()
    path = out / "throughput.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)
    return written
