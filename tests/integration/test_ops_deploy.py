"""The deployment files (no Docker engine here): compose.yaml keeps to the Compose
specification and the topology the issue asks for, the Dockerfile is slim, multi-stage and
unprivileged, and deploy/nginx.conf passes WebSocket upgrades and is accepted by nginx."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from app.cluster import find_nginx
from tests.services import unavailable

ROOT = Path(__file__).resolve().parents[2]

# Service keys of the Compose specification (compose-spec/schema/compose-spec.json).
SERVICE_KEYS = {
    "build", "command", "container_name", "depends_on", "deploy", "entrypoint", "env_file",
    "environment", "expose", "healthcheck", "image", "labels", "logging", "networks", "ports",
    "pull_policy", "read_only", "restart", "stop_grace_period", "stop_signal", "user", "volumes",
    "working_dir", "x-",
}  # fmt: skip
HEALTHCHECK_KEYS = {"test", "interval", "timeout", "retries", "start_period", "start_interval"}
DEPENDS_CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}
DURATION = re.compile(r"^(\d+(\.\d+)?(us|ms|s|m|h))+$")
RESTART = {"no", "always", "on-failure", "unless-stopped"}


def compose() -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "compose.yaml").read_text())
    assert isinstance(data, dict)
    return data


def test_compose_has_the_production_topology() -> None:
    """PostgreSQL, Redis, the app with at least 2 replicas behind an nginx load balancer, a
    one-shot migration the replicas wait for, webhooks sent by a service of their own (the
    replicas' own sending off), every long-running service health-checked."""
    services = compose()["services"]
    assert {"postgres", "redis", "app", "lb", "migrate", "webhooks"} <= set(services)
    assert services["webhooks"]["command"][:2] == ["paycode", "webhooks"]
    assert services["app"]["environment"]["PAYCODE_WEBHOOK_WORKER"] == "off"
    assert services["webhooks"]["depends_on"]["migrate"]["condition"] == (
        "service_completed_successfully"
    )
    app = services["app"]
    assert app["deploy"]["replicas"] >= 2
    assert "ports" not in app, "replicas are reached through the load balancer only"
    assert services["lb"]["image"].startswith("nginx:")
    assert "./deploy/nginx.conf:/etc/nginx/nginx.conf:ro" in services["lb"]["volumes"]
    assert app["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert app["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert app["depends_on"]["redis"]["condition"] == "service_healthy"
    for name in ("postgres", "redis", "app", "lb", "webhooks"):
        assert services[name]["healthcheck"]["test"], name
    assert "/readyz" in " ".join(app["healthcheck"]["test"])


def test_compose_configures_the_app_by_environment() -> None:
    """The app gets PostgreSQL and Redis URLs and the spec's settings from the environment;
    no variable it is given is unknown to paycode or uvicorn."""
    env = compose()["services"]["app"]["environment"]
    assert env["PAYCODE_DATABASE_URL"].startswith("postgresql://")
    assert env["PAYCODE_BROKER_URL"].startswith("redis://")
    known = {
        "PAYCODE_DATABASE_URL", "PAYCODE_BROKER_URL", "PAYCODE_PUBLIC_URL", "PAYCODE_CURRENCY",
        "PAYCODE_ADMIN_TOKEN", "PAYCODE_RECEIPT_KEY", "PAYCODE_LOG_LEVEL", "FORWARDED_ALLOW_IPS",
        "PAYCODE_WEBHOOK_WORKER",
    }  # fmt: skip
    assert set(env) <= known
    assert compose()["services"]["migrate"]["environment"] == env


def test_compose_keeps_to_the_specification() -> None:
    """Only keys, conditions, durations and restart policies the Compose spec defines."""
    data = compose()
    assert set(data) <= {"name", "services", "volumes", "networks", "configs", "secrets"} | {
        k for k in data if k.startswith("x-")
    }
    assert "version" not in data, "the Compose spec made `version` obsolete"
    for name, service in data["services"].items():
        assert set(service) <= SERVICE_KEYS, (name, set(service) - SERVICE_KEYS)
        assert "image" in service or "build" in service, name
        assert str(service.get("restart", "no")) in RESTART, name
        check = service.get("healthcheck")
        if check:
            assert set(check) <= HEALTHCHECK_KEYS, name
            assert check["test"][0] in ("CMD", "CMD-SHELL", "NONE"), name
            for key in ("interval", "timeout", "start_period"):
                if key in check:
                    assert DURATION.match(check[key]), (name, key)
        if "stop_grace_period" in service:
            assert DURATION.match(service["stop_grace_period"]), name
        for dependency in (service.get("depends_on") or {}).values():
            assert dependency["condition"] in DEPENDS_CONDITIONS, name
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), source
            else:
                assert source in data["volumes"], source


def dockerfile_stages() -> list[list[str]]:
    stages: list[list[str]] = []
    lines = (ROOT / "Dockerfile").read_text().replace("\\\n", " ").splitlines()
    for line in lines:
        if line.startswith("FROM "):
            stages.append([])
        if stages and line.strip() and not line.startswith("#"):
            stages[-1].append(line)
    return stages


def test_dockerfile_is_multi_stage_slim_and_unprivileged() -> None:
    """The final stage starts from a slim image, installs nothing (no compilers, no apt), copies
    the built virtualenv, runs as a non-root user and declares a health check."""
    stages = dockerfile_stages()
    assert len(stages) >= 2
    final = stages[-1]
    assert "slim" in final[0]
    text = "\n".join(final)
    assert "COPY --from=build" in text
    for forbidden in ("apt-get", "gcc", "build-essential", "pip install"):
        assert forbidden not in text, forbidden
    users = [line.split()[1] for line in final if line.startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert any(line.startswith("HEALTHCHECK ") for line in final)
    assert any(line.startswith("STOPSIGNAL SIGTERM") for line in final)
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    assert "*" in ignore, "the build context is an allowlist"
    assert "!tests/" not in ignore


def test_nginx_config_passes_websockets_and_is_valid(tmp_path: Path) -> None:
    """deploy/nginx.conf speaks HTTP/1.1 to the replicas with Upgrade and Connection passed
    through, and nginx accepts it (with Docker's DNS name swapped for a local address)."""
    config = (ROOT / "deploy" / "nginx.conf").read_text()
    assert "proxy_http_version 1.1;" in config
    assert "proxy_set_header Upgrade $http_upgrade;" in config
    assert "proxy_set_header Connection $connection_upgrade;" in config
    assert "server app:8000 resolve" in config
    try:
        nginx = find_nginx(install=True)
    except Exception as exc:
        unavailable(f"nginx is not available: {exc}")
        return
    # Debian's nginx 1.22 predates `resolve` in upstreams (nginx 1.27.3); check the rest.
    local = config.replace("server app:8000 resolve", "server 127.0.0.1:1")
    local = re.sub(r"\n\s*resolver [^\n]*;", "\n", local)
    (tmp_path / "nginx.conf").write_text(local)
    command = [nginx, "-t", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")]
    command += ["-e", str(tmp_path / "error.log"), "-g", f"pid {tmp_path / 'nginx.pid'};"]
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("path", ["compose.yaml", "deploy/nginx.conf", "Dockerfile"])
def test_deploy_files_hold_no_real_secrets(path: str) -> None:
    """Passwords and tokens come from the environment; the files only carry local defaults."""
    text = (ROOT / path).read_text()
    assert "PAYCODE_ADMIN_TOKEN: ${PAYCODE_ADMIN_TOKEN:-}" in text or path != "compose.yaml"
    assert not re.search(r"(?i)(password|token)\s*[:=]\s*['\"]?[A-Za-z0-9]{20,}", text)
