"""`make cluster`: the production topology on one machine, without Docker.

N ``paycode serve`` processes (one worker each, their own ports) on one PostgreSQL database and
one Redis, behind nginx from the distribution's package. Started in order and health-checked
(migrate once → every app's /readyz → nginx's /readyz), stopped cleanly (nginx, then SIGTERM
to each app so its WebSockets close with 1012 and its requests finish). Tests and load tests
drive the same class and can SIGTERM, SIGKILL or restart one app process.

    python -m app.cluster --processes 3 --port 8080
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import TracebackType

from sqlalchemy.engine import make_url

DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/paycode"
DEFAULT_BROKER_URL = "redis://127.0.0.1:6379/0"
NGINX_CANDIDATES = ("/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx")


class ClusterError(RuntimeError):
    """The cluster could not start; the message says which part and shows its log."""


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# Health checks go straight to 127.0.0.1, never through an HTTP proxy from the environment.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http_status(url: str, timeout: float = 1.0) -> int | None:
    try:
        with _DIRECT.open(url, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (OSError, ValueError):
        return None


def wait_for(url: str, timeout: float, alive: object = None) -> bool:
    """Poll until ``url`` answers 200; stop early when ``alive()`` says the process died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if http_status(url) == 200:
            return True
        if callable(alive) and not alive():
            return False
        time.sleep(0.1)
    return False


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def find_nginx(install: bool = True) -> str:
    """nginx from PATH or sbin; installed with apt-get (as root) when missing."""
    found = shutil.which("nginx") or next((p for p in NGINX_CANDIDATES if Path(p).exists()), None)
    if found:
        return found
    if not install:
        raise ClusterError("nginx is not installed (apt-get install nginx)")
    apt = ["apt-get"] if os.geteuid() == 0 else ["sudo", "-n", "apt-get"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        subprocess.run([*apt, "update", "-qq"], check=True, env=env)
        subprocess.run([*apt, "install", "-y", "-qq", "nginx"], check=True, env=env)
    except (OSError, subprocess.CalledProcessError) as exc:
        raise ClusterError(f"nginx is missing and could not be installed: {exc}") from exc
    return find_nginx(install=False)


def ensure_postgres_database(database_url: str) -> None:
    """Create the PostgreSQL database of the URL when it does not exist yet."""
    url = make_url(database_url)
    if url.get_backend_name() != "postgresql" or not url.database:
        return
    import psycopg

    admin = url.set(drivername="postgresql", database="postgres")
    with psycopg.connect(admin.render_as_string(hide_password=False), autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (url.database,))
        if exists.fetchone() is None:
            conn.execute(f'CREATE DATABASE "{url.database.replace(chr(34), "")}"')


class AppProcess:
    """One ``paycode serve`` on its own port, its output in its own log file."""

    def __init__(
        self,
        index: int,
        port: int,
        env: Mapping[str, str],
        log_path: Path,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.index = index
        self.port = port
        self.env = dict(env)
        self.log_path = log_path
        self.extra_args = extra_args
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        command = [sys.executable, "-m", "app.cli", "serve"]
        command += ["--host", "127.0.0.1", "--port", str(self.port), *self.extra_args]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                command,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait_ready(self, timeout: float = 30.0) -> None:
        if not wait_for(f"{self.url}/readyz", timeout, self.running):
            raise ClusterError(
                f"app {self.index} on port {self.port} is not ready:\n{tail(self.log_path)}"
            )

    def signal(self, sig: signal.Signals) -> None:
        if self.running():
            assert self.process is not None
            self.process.send_signal(sig)

    def terminate(self) -> None:
        """SIGTERM: stop accepting, close WebSockets with 1012, finish requests, exit."""
        self.signal(signal.SIGTERM)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)

    def wait(self, timeout: float = 20.0) -> int | None:
        if self.process is None:
            return None
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return self.process.wait(timeout=5)

    def stop(self, timeout: float = 20.0) -> int | None:
        self.terminate()
        return self.wait(timeout)

    def restart(self, timeout: float = 30.0) -> None:
        self.stop()
        self.start()
        self.wait_ready(timeout)


def nginx_config(run_dir: Path, port: int, upstreams: list[int]) -> str:
    """Least-connections balancing (WebSockets are long-lived, so fewest open wins), HTTP/1.1
    with Upgrade/Connection passed through, and a dead upstream skipped for a few seconds."""
    servers = "\n".join(
        f"        server 127.0.0.1:{p} max_fails=1 fail_timeout=3s;" for p in upstreams
    )
    temp = "\n".join(
        f"    {name}_temp_path {run_dir / name};"
        for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""# generated by app.cluster; regenerated at every start
worker_processes 1;
pid {run_dir / "nginx.pid"};
error_log {run_dir / "nginx-error.log"} warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
{temp}
    map $http_upgrade $connection_upgrade {{ default upgrade; '' ''; }}
    map $http_x_request_id $paycode_request_id {{ default $http_x_request_id; '' $request_id; }}
    upstream paycode {{
        least_conn;
{servers}
        keepalive 64;
    }}
    server {{
        listen 127.0.0.1:{port};
        client_max_body_size 128k;
        location / {{
            proxy_pass http://paycode;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Request-ID $paycode_request_id;
            proxy_read_timeout 3600s;
            proxy_send_timeout 3600s;
            proxy_next_upstream error timeout http_502 http_503;
            proxy_next_upstream_tries 3;
        }}
    }}
}}
"""


class Nginx:
    def __init__(self, binary: str, run_dir: Path, port: int, upstreams: list[int]) -> None:
        self.binary = binary
        self.run_dir = run_dir
        self.port = port
        self.upstreams = upstreams
        self.config_path = run_dir / "nginx.conf"
        self.log_path = run_dir / "nginx.log"
        self.process: subprocess.Popen[bytes] | None = None

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, timeout: float = 15.0) -> None:
        for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
            # nginx's workers drop to an unprivileged user when started as root.
            (self.run_dir / name).mkdir(mode=0o777, exist_ok=True)
            (self.run_dir / name).chmod(0o777)
        self.config_path.write_text(nginx_config(self.run_dir, self.port, self.upstreams))
        command = [self.binary, "-p", str(self.run_dir), "-c", str(self.config_path)]
        command += ["-e", str(self.run_dir / "nginx-error.log"), "-g", "daemon off;"]
        check = subprocess.run([*command, "-t"], capture_output=True, text=True)
        if check.returncode != 0:
            raise ClusterError(f"nginx rejected its configuration:\n{check.stderr}")
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        if not wait_for(f"http://127.0.0.1:{self.port}/readyz", timeout, self.running):
            raise ClusterError(
                f"nginx on port {self.port} is not ready:\n"
                f"{tail(self.log_path)}\n{tail(self.run_dir / 'nginx-error.log')}"
            )

    def stop(self) -> None:
        if not self.running():
            return
        assert self.process is not None
        # SIGQUIT: graceful; open WebSockets are closed by the apps' own shutdown.
        self.process.send_signal(signal.SIGQUIT)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class Cluster:
    """N app processes + nginx on a given PostgreSQL and Redis."""

    def __init__(
        self,
        processes: int = 3,
        *,
        database_url: str = DEFAULT_DATABASE_URL,
        broker_url: str = DEFAULT_BROKER_URL,
        port: int | None = None,
        run_dir: Path | None = None,
        env: Mapping[str, str] | None = None,
        install_nginx: bool = True,
    ) -> None:
        if processes < 1:
            raise ClusterError("a cluster needs at least one app process")
        if not broker_url.startswith(("redis://", "rediss://")):
            raise ClusterError(
                "a cluster needs a shared broker: set a redis:// URL (memory:// reaches only the "
                "sockets of its own process)"
            )
        self.database_url = database_url
        self.broker_url = broker_url
        self.port = port or free_port()
        self.run_dir = run_dir or Path(tempfile.mkdtemp(prefix="paycode-cluster-"))
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.run_dir.chmod(0o755)
        self.install_nginx = install_nginx
        app_env = {
            **os.environ,
            **(env or {}),
            "PAYCODE_DATABASE_URL": database_url,
            "PAYCODE_BROKER_URL": broker_url,
        }
        app_env.setdefault("PAYCODE_PUBLIC_URL", f"http://127.0.0.1:{self.port}")
        # Each process is scraped on its own port; no shared multiprocess directory.
        app_env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        self.apps = [
            AppProcess(i, free_port(), app_env, self.run_dir / f"app-{i}.log")
            for i in range(processes)
        ]
        self.nginx: Nginx | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/api/v1/ws"

    def start(self, timeout: float = 60.0) -> None:
        try:
            binary = find_nginx(self.install_nginx)
            ensure_postgres_database(self.database_url)
            env = self.apps[0].env
            migrate = subprocess.run(
                [sys.executable, "-m", "app.cli", "migrate"],
                env=env,
                capture_output=True,
                text=True,
            )
            if migrate.returncode != 0:
                raise ClusterError(f"migration failed:\n{migrate.stdout}{migrate.stderr}")
            for app in self.apps:
                app.start()
            for app in self.apps:
                app.wait_ready(timeout)
            self.nginx = Nginx(binary, self.run_dir, self.port, [a.port for a in self.apps])
            self.nginx.start()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        if self.nginx is not None:
            self.nginx.stop()
        for app in self.apps:
            app.terminate()
        for app in self.apps:
            app.wait()

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in self.run_dir.glob("*.log"))

    def __enter__(self) -> Cluster:
        self.start()
        return self

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _value: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        self.stop()


@contextlib.contextmanager
def _until_signalled() -> Iterator[None]:
    """Turn SIGTERM into KeyboardInterrupt so `kill` stops the cluster as cleanly as Ctrl-C."""

    def _raise(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app.cluster", description=__doc__)
    parser.add_argument("--processes", type=int, default=3)
    parser.add_argument("--port", type=int, default=8080, help="nginx's port")
    parser.add_argument(
        "--database-url", default=os.environ.get("PAYCODE_DATABASE_URL") or DEFAULT_DATABASE_URL
    )
    parser.add_argument(
        "--broker-url", default=os.environ.get("PAYCODE_BROKER_URL") or DEFAULT_BROKER_URL
    )
    parser.add_argument("--run-dir", type=Path, default=None, help="config and logs go here")
    parser.add_argument("--demo", action="store_true", help="seed the demo accounts first")
    args = parser.parse_args(argv)
    try:
        cluster = Cluster(
            args.processes,
            database_url=args.database_url,
            broker_url=args.broker_url,
            port=args.port,
            run_dir=args.run_dir,
        )
        if args.demo:
            ensure_postgres_database(args.database_url)
            env = {**cluster.apps[0].env, "PAYCODE_PUBLIC_URL": cluster.url}
            subprocess.run([sys.executable, "-m", "app.cli", "demo"], env=env, check=True)
        with _until_signalled():
            cluster.start()
            print(f"paycode cluster up: {cluster.url} (nginx) → ", end="")
            print(", ".join(f"{a.url} [pid {a.pid}]" for a in cluster.apps))
            print(f"config and logs in {cluster.run_dir}; Ctrl-C stops it", flush=True)
            try:
                while all(a.running() for a in cluster.apps) and cluster.nginx is not None:
                    if not cluster.nginx.running():
                        break
                    time.sleep(1)
                print("a process exited; stopping the cluster", file=sys.stderr)
                return 1
            except KeyboardInterrupt:
                return 0
            finally:
                cluster.stop()
    except ClusterError as exc:
        print(f"paycode cluster: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
