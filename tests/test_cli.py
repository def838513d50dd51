"""The ``pooler`` command as a user runs it: subprocesses, real signals, real clients."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
import psycopg
import pytest
from harness import free_port
from support import APP_DB, APP_PASSWORD, APP_USER, OTHER_DB, PostgresServer


def pooler_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "pooler", *args]


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("POOLER_") and k != "DATABASE_URL"}
    env["POOLER_METRICS_PORT"] = "0"  # the default 9127 is a fixed port: tests that want metrics pick a free one
    env.update(extra)
    return env


@contextmanager
def running(cmd: list[str], env: dict[str, str], port: int) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, f"pooler exited early: {proc.communicate()}"
            try:
                with psycopg.connect(f"postgresql://{APP_USER}:{APP_PASSWORD}@127.0.0.1:{port}/{APP_DB}",
                                     connect_timeout=2):
                    break
            except psycopg.OperationalError:
                assert time.monotonic() < deadline, "pooler did not start listening"
                time.sleep(0.1)
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_bad_config_is_one_line_exit_2_and_starts_nothing(tmp_path: Path) -> None:
    ini = tmp_path / "pgbouncer.ini"
    port = free_port()
    ini.write_text(
        f"[databases]\nappdb = host=127.0.0.1\n[pgbouncer]\nlisten_port = {port}\ndefault_pool_size = many\n"
    )
    result = subprocess.run(pooler_cmd("run", "-c", str(ini)), env=clean_env(), capture_output=True, text=True,
                            timeout=30, check=False)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert str(ini) in lines[0] and "default_pool_size" in lines[0] and "many" in lines[0]


def test_missing_config_file_is_a_clear_error(tmp_path: Path) -> None:
    result = subprocess.run(pooler_cmd("run", "-c", str(tmp_path / "nope.ini")), env=clean_env(),
                            capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 2
    assert "nope.ini" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_no_database_at_all_is_refused(tmp_path: Path) -> None:
    result = subprocess.run(pooler_cmd("run"), env=clean_env(), capture_output=True, text=True, timeout=30,
                            check=False)
    assert result.returncode == 2
    assert "DATABASE_URL" in result.stderr


def test_run_reads_a_pgbouncer_ini_as_is(postgres: PostgresServer, tmp_path: Path) -> None:
    port = free_port()
    (tmp_path / "userlist.txt").write_text(f'"{APP_USER}" "{APP_PASSWORD}"\n')
    ini = tmp_path / "pgbouncer.ini"
    ini.write_text(
        "[databases]\n"
        f"{APP_DB} = host={postgres.host} port={postgres.port} dbname={APP_DB}\n"
        "[pgbouncer]\n"
        "listen_addr = 127.0.0.1\n"
        f"listen_port = {port}\n"
        "auth_type = scram-sha-256\n"
        "auth_file = userlist.txt\n"
        "default_pool_size = 3\n"
        "logfile = /dev/null\n"
        "client_tls_ecdhcurve = auto\n"  # a PgBouncer setting we do not support: logged, not fatal
    )
    with running(pooler_cmd("run", "-c", str(ini)), clean_env(), port) as proc:
        with psycopg.connect(f"postgresql://{APP_USER}:{APP_PASSWORD}@127.0.0.1:{port}/{APP_DB}") as conn:
            assert conn.execute("select current_database()").fetchone() == (APP_DB,)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=15)
    assert proc.returncode == 0
    assert "client_tls_ecdhcurve" in err  # the ignored setting is named in the log


def test_database_url_alone_configures_everything(postgres: PostgresServer) -> None:
    port, direct = free_port(), free_port()
    env = clean_env(
        DATABASE_URL=postgres.dsn(APP_DB, APP_USER, APP_PASSWORD),
        POOLER_LISTEN_PORT=str(port),
        POOLER_DIRECT_PORT=str(direct),
        POOLER_AUTH_TYPE="scram-sha-256",
        POOLER_DEFAULT_POOL_SIZE="2",
    )
    with running(pooler_cmd("run"), env, port) as proc:
        with psycopg.connect(f"postgresql://{APP_USER}:{APP_PASSWORD}@127.0.0.1:{direct}/{APP_DB}") as conn:
            assert conn.execute("select 1").fetchone() == (1,)
        with pytest.raises(psycopg.OperationalError, match="SASL authentication failed"):
            psycopg.connect(f"postgresql://{APP_USER}:wrong@127.0.0.1:{port}/{APP_DB}")
        # The URL picks the server, not the database: a client asking for another database gets that one.
        for dbname in (APP_DB, OTHER_DB):
            with psycopg.connect(f"postgresql://{APP_USER}:{APP_PASSWORD}@127.0.0.1:{port}/{dbname}") as conn:
                assert conn.execute("select current_database()").fetchone() == (dbname,)
        # `pooler check --login` logs in to the URL's own database.
        check = subprocess.run(pooler_cmd("check", "--login"), env=env, capture_output=True, text=True, timeout=30,
                               check=False)
        assert check.returncode == 0, check.stderr
        proc.send_signal(signal.SIGINT)
        proc.wait(15)
    assert proc.returncode == 0


def _children_alive(pid: int) -> list[psutil.Process]:
    try:
        return [p for p in psutil.Process(pid).children(recursive=True) if p.is_running()]
    except psutil.NoSuchProcess:
        return []


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_up_prints_urls_that_work_and_stops_cleanly(embedded_tmp: Path, sig: signal.Signals) -> None:
    port, direct = free_port(), free_port()
    env_file = embedded_tmp / "app.env"
    proc = subprocess.Popen(
        pooler_cmd("up", "--port", str(port), "--direct-port", str(direct), "--data-dir", str(embedded_tmp / "data"),
                   "--env-file", str(env_file)),
        env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        pooled = proc.stdout.readline().strip()
        unpooled = proc.stdout.readline().strip()
        assert pooled.startswith("DATABASE_URL=postgresql://") and f":{port}/" in pooled
        assert unpooled.startswith("DATABASE_URL_UNPOOLED=postgresql://") and f":{direct}/" in unpooled
        assert env_file.read_text().splitlines() == [pooled, unpooled]
        # HTTPS and WSS: `up` does TLS (tests/test_tls_http.py runs these lines as printed).
        neon_lines = [proc.stdout.readline().strip() for _ in range(5)]
        assert f"neonConfig.fetchEndpoint = 'https://localhost:{port}/sql';" in neon_lines
        assert f"neonConfig.wsProxy = (host) => `${{host}}:{port}/v2`;" in neon_lines
        assert "neonConfig.useSecureWebSocket = true;" in neon_lines
        children = _children_alive(proc.pid)
        assert any("postgres" in p.name() for p in children)
        with psycopg.connect(pooled.split("=", 1)[1]) as conn:
            assert conn.execute("show max_connections").fetchone() == ("112",)  # Neon's 0.25 CU
        admin_url = pooled.split("=", 1)[1].rsplit("/", 1)[0] + "/pgbouncer"
        with psycopg.connect(admin_url, autocommit=True) as admin:  # the generated role is an admin user
            assert admin.execute("SHOW VERSION").fetchone() is not None
        with psycopg.connect(unpooled.split("=", 1)[1]) as conn:
            conn.execute("create table if not exists kept (x int)")
            conn.execute("insert into kept values (1)")
            conn.commit()
        proc.send_signal(sig)
        proc.wait(30)
        assert proc.returncode == 0
        psutil.wait_procs(children, timeout=10)
        assert not [p for p in children if p.is_running()], "postgres left behind"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # The data directory persists: a second `up` sees the same URLs and the same data.
    proc = subprocess.Popen(
        pooler_cmd("up", "--port", str(port), "--direct-port", str(direct), "--data-dir", str(embedded_tmp / "data")),
        env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == pooled
        with psycopg.connect(pooled.split("=", 1)[1]) as conn:
            assert conn.execute("select count(*) from kept").fetchone() == (1,)
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
