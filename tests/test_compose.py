"""The docker-compose sidecar's wiring, checked without Docker (no daemon can run on CI machines).

What can go wrong in a compose file without anyone noticing until ``docker compose up``: an environment
variable the pooler does not read (a typo is silently ignored by Docker), a published port the pooler
does not listen on, a healthcheck that calls a command that does not exist, a Prometheus target on the
wrong port, a dashboard that queries metrics nobody exports. Each is checked here against the real
thing: the pooler's own config loader and CLI parser, a pooler started with the compose environment,
``pg_isready`` against a real Postgres, and a live /metrics scrape.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shlex
import subprocess
import time
import tomllib
from contextlib import suppress
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest
import yaml
from harness import free_port
from opshelp import http_get
from prometheus_client.parser import text_string_to_metric_families
from support import APP_DB, APP_PASSWORD, APP_USER, PostgresServer
from test_cli import clean_env, pooler_cmd

from pooler.cli import _parser
from pooler.config import Settings, load_config

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    assert isinstance(data, dict)
    return data


def services(compose: dict[str, Any]) -> dict[str, Any]:
    result = compose["services"]
    assert isinstance(result, dict)
    return result


def pooler_env(compose: dict[str, Any]) -> dict[str, str]:
    env = services(compose)["pooler"]["environment"]
    assert isinstance(env, dict), "use the mapping form of environment: so keys can be checked"
    return {str(k): str(v) for k, v in env.items()}


def container_ports(service: dict[str, Any]) -> set[int]:
    out = set()
    for spec in service.get("ports", []):
        host, _, container = str(spec).rpartition(":")
        assert host, f"publish {spec} on a host port"
        out.add(int(container.split("/")[0]))
    return out


def test_services_and_their_order(compose: dict[str, Any]) -> None:
    svc = services(compose)
    assert {"postgres", "pooler", "prometheus"} <= set(svc)
    postgres = svc["postgres"]
    assert re.fullmatch(r"postgres:\d+(\.\d+)?(-\w+)?", postgres["image"]), "the official postgres image"
    assert "max_connections=100" in " ".join(postgres["command"])
    assert svc["pooler"]["build"] == "." and (REPO / "Dockerfile").is_file()
    assert svc["pooler"]["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    assert svc["prometheus"]["depends_on"] == {"pooler": {"condition": "service_healthy"}}
    for name in ("postgres", "pooler"):
        assert svc[name]["healthcheck"]["test"][0] in ("CMD", "CMD-SHELL")
    assert svc["pooler"]["stop_signal"] == "SIGINT"  # transactions in flight finish on `docker compose stop`


def test_every_pooler_variable_is_one_pooler_reads(compose: dict[str, Any]) -> None:
    env = pooler_env(compose)
    settings = {f"POOLER_{f.name.upper()}" for f in dataclasses.fields(Settings)}
    unknown = set(env) - settings - {"DATABASE_URL"}
    assert not unknown, f"variables the pooler does not read: {sorted(unknown)}"
    assert {"DATABASE_URL", "POOLER_POOL_MODE", "POOLER_DEFAULT_POOL_SIZE"} <= set(env)
    config = load_config(None, env)  # every value valid, as the pooler will parse it
    assert config.ignored == ()
    s = config.settings
    assert (s.pool_mode.value, s.listen_addr) == ("transaction", "0.0.0.0")
    assert APP_USER in s.admin_users or s.admin_users, "the console needs an admin user"
    url = urlsplit(env["DATABASE_URL"])
    assert url.hostname == "postgres" and url.port == 5432, "DATABASE_URL must point at the postgres service"
    postgres_env = services(compose)["postgres"]["environment"]
    assert (url.username, url.password, url.path.lstrip("/")) == (
        postgres_env["POSTGRES_USER"], postgres_env["POSTGRES_PASSWORD"], postgres_env["POSTGRES_DB"])
    published = container_ports(services(compose)["pooler"])
    assert published == {s.listen_port, s.direct_port, s.metrics_port}, "publish both endpoints and metrics"


def test_dockerfile_is_slim_non_root_and_env_configured() -> None:
    text = (REPO / "Dockerfile").read_text()
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    stages = [line for line in lines if line.startswith("FROM ")]
    # Two stages: the first compiles the core (it has gcc), the image is the last and has no compiler.
    assert [bool(re.fullmatch(r"FROM python:3\.\d+-slim AS build", s)) for s in stages[:-1]] == [True]
    assert re.fullmatch(r"FROM python:3\.\d+-slim", stages[-1])
    build = lines[lines.index(stages[0]) : lines.index(stages[-1])]
    image = lines[lines.index(stages[-1]) :]
    assert any("gcc" in line for line in build) and any("pip wheel" in line for line in build)
    assert not any("gcc" in line or "build-essential" in line for line in image)
    assert any(line.startswith("COPY --from=build") for line in image)
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0"), "the pooler must not run as root"
    assert "ENTRYPOINT [\"pooler\"]" in lines and "CMD [\"run\"]" in lines
    assert not any(line.startswith("COPY") and ("config" in line or ".ini" in line) for line in lines), \
        "configured by environment only: no config file in the image"
    exposed = {int(p) for line in lines if line.startswith("EXPOSE ") for p in line.split()[1:]}
    assert {6432, 6433, 9127} <= exposed
    healthcheck = next(line for line in lines if line.startswith("HEALTHCHECK"))
    assert healthcheck.endswith('CMD ["pooler", "check"]')
    script = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    # the `pooler` the image's ENTRYPOINT runs: a Ctrl-C even while it imports the CLI is one line
    assert script["pooler"] == "pooler.__main__:run"


def test_healthcheck_commands_exist_and_work(compose: dict[str, Any], postgres: PostgresServer) -> None:
    pooler_test = services(compose)["pooler"]["healthcheck"]["test"]
    assert pooler_test[:2] == ["CMD", "pooler"]
    _parser().parse_args(pooler_test[2:])  # a real subcommand with valid options (exits on a bad one)
    pg_test = services(compose)["postgres"]["healthcheck"]["test"]
    argv = shlex.split(pg_test[1]) if pg_test[0] == "CMD-SHELL" else pg_test[1:]
    assert argv[0] == "pg_isready"
    assert postgres.bin_dir is not None and (postgres.bin_dir / "pg_isready").is_file()
    # The same flags against a real Postgres (plus where it is: the container uses the local socket).
    result = subprocess.run([str(postgres.bin_dir / "pg_isready"), *argv[1:], "-h", postgres.host, "-p",
                             str(postgres.port)], capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_pooler_service_runs_on_its_compose_environment(
        compose: dict[str, Any], postgres: PostgresServer) -> None:
    """Start the pooler with exactly the service's environment, but pointed at the test Postgres and free ports;
    then do what compose and Prometheus do: the healthcheck, a client, the console, a scrape."""
    env = pooler_env(compose)
    ports = {"POOLER_LISTEN_PORT": free_port(), "POOLER_DIRECT_PORT": free_port(), "POOLER_METRICS_PORT": free_port()}
    assert set(ports) <= set(env)
    env.update({k: str(v) for k, v in ports.items()})
    env["DATABASE_URL"] = f"postgresql://{APP_USER}:{APP_PASSWORD}@{postgres.host}:{postgres.port}/{APP_DB}"
    admin_user = env["POOLER_ADMIN_USERS"].split(",")[0]
    proc = subprocess.Popen(pooler_cmd("run"), env=clean_env(**env), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    pooled = f"postgresql://{APP_USER}:{APP_PASSWORD}@127.0.0.1:{ports['POOLER_LISTEN_PORT']}"
    try:
        deadline = time.monotonic() + 20
        while True:
            assert proc.poll() is None, proc.communicate()
            with suppress(psycopg.OperationalError), psycopg.connect(f"{pooled}/{APP_DB}", connect_timeout=2):
                break
            assert time.monotonic() < deadline
            time.sleep(0.05)
        health = services(compose)["pooler"]["healthcheck"]["test"][1:]
        result = subprocess.run(pooler_cmd(*health[1:]), env=clean_env(**env), capture_output=True, text=True,
                                timeout=30, check=False)
        assert result.returncode == 0, result.stderr
        with psycopg.connect(f"{pooled}/{APP_DB}") as conn:
            assert conn.execute("select current_database()").fetchone() == (APP_DB,)
        direct = f"postgresql://{APP_USER}:{APP_PASSWORD}@127.0.0.1:{ports['POOLER_DIRECT_PORT']}/{APP_DB}"
        with psycopg.connect(direct) as conn:
            assert conn.execute("select 1").fetchone() == (1,)
        # compose makes the DATABASE_URL user the console's admin (the test's user has the same name)
        assert admin_user == urlsplit(pooler_env(compose)["DATABASE_URL"]).username == APP_USER
        with psycopg.connect(f"{pooled}/pgbouncer", autocommit=True) as conn:
            pools = conn.execute("SHOW POOLS").fetchall()
            assert [(r[0], r[1]) for r in pools] == [(APP_DB, APP_USER), ("pgbouncer", "pgbouncer")]
        status, _, body = http_get(ports["POOLER_METRICS_PORT"], "/metrics")
        assert status == 200
        check_prometheus_target(int(pooler_env(compose)["POOLER_METRICS_PORT"]))
        check_dashboard(body)
    finally:
        proc.terminate()
        proc.wait(10)
    assert proc.returncode == 0
    assert proc.stderr is not None
    for line in proc.stderr.read().splitlines():  # POOLER_LOG_FORMAT=json: machine-readable from line one
        json.loads(line)


def check_prometheus_target(metrics_port: int) -> None:
    text = (REPO / "config" / "prometheus.yml").read_text()
    config = yaml.safe_load(text)
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    job = jobs["pooler"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    targets = [t for sc in job["static_configs"] for t in sc["targets"]]
    assert targets == [f"pooler:{metrics_port}"]


def check_dashboard(metrics_text: str) -> None:
    """Every metric the Grafana dashboard queries is one the pooler exports (declared, even with no sample yet)."""
    dashboard = json.loads((REPO / "config" / "grafana" / "dashboards" / "pooler.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    exprs.append(dashboard["templating"]["list"][0]["query"]["query"])
    exported = set()
    for family in text_string_to_metric_families(metrics_text):
        exported.add(family.name)
        exported.update(sample.name for sample in family.samples)
    for expr in exprs:
        for name in re.findall(r"\b(?:pgbouncer|pooler)_[a-z_]+", expr):
            known = name in exported or name.removesuffix("_total") in exported
            assert known, f"the dashboard queries {name}, which pooler does not export"
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == "prometheus"
    provisioning = yaml.safe_load((REPO / "config/grafana/provisioning/datasources/prometheus.yml").read_text())
    assert provisioning["datasources"][0]["uid"] == "prometheus"
    assert provisioning["datasources"][0]["url"] == "http://prometheus:9090"
