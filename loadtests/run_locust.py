"""``make loadtest``: Locust headless against a server, bounded in time.

Without ``--host`` a paycode server is started on a free port (SQLite in a temporary
directory, memory broker) and stopped afterwards. With ``--processes N`` Locust forks N
workers and the code queue moves to a private redis-server, so any payer can pay any
counter's code.

    python -m loadtests.run_locust --users 30 --spawn-rate 10 --duration 60s
    python -m loadtests.run_locust --host http://127.0.0.1:8000 --processes 2
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from loadtests import servers

LOCUSTFILE = Path(__file__).with_name("locustfile.py")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="loadtests.run_locust", description=__doc__)
    parser.add_argument("--users", type=int, default=30)
    parser.add_argument("--spawn-rate", type=float, default=10)
    parser.add_argument("--duration", default="60s", help="Locust --run-time, e.g. 30s, 5m")
    parser.add_argument("--host", default=None, help="a running server; its admin token in env")
    parser.add_argument("--processes", type=int, default=1, help="Locust worker processes")
    parser.add_argument("--csv", default=None, help="prefix of Locust's CSV files")
    args = parser.parse_args(argv)

    with contextlib.ExitStack() as stack:
        logs = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="paycode-locust-")))
        env = dict(os.environ)
        host = args.host
        if host is None:
            server = servers.start_paycode(f"sqlite:///{logs / 'load.db'}", "memory://", 1, logs)
            stack.callback(server.stop)
            host = f"http://{server.host}:{server.port}"
            env["PAYCODE_ADMIN_TOKEN"] = servers.ADMIN_TOKEN
        if args.processes > 1 and "PAYCODE_LOAD_QUEUE" not in env:
            env["PAYCODE_LOAD_QUEUE"] = stack.enter_context(servers.redis_server(logs))
        cmd = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless"]
        cmd += ["--users", str(args.users), "--spawn-rate", str(args.spawn_rate)]
        cmd += ["--run-time", args.duration, "--host", host, "--stop-timeout", "10"]
        cmd += ["--only-summary"]
        if args.processes > 1:
            cmd += ["--processes", str(args.processes)]
        if args.csv:
            cmd += ["--csv", args.csv]
        return subprocess.call(cmd, env=env, cwd=servers.ROOT)


if __name__ == "__main__":
    sys.exit(main())
