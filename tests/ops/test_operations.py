"""Operating the ``pooler run`` process as an operator would: real signals, a real config file, real clients.

SIGHUP re-reads the file (pool size grows under load, the auth_file is re-read, a broken file changes
nothing); each shutdown mode is checked with transactions in flight: none is cut in half, none that
committed is lost; logs are JSON lines a machine can parse; ``pooler check`` answers for healthchecks.
"""

from __future__ import annotations

import io
import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import psycopg
import pytest
import structlog
from backends import Activity, in_thread, wait_for_no_test_backends, wait_until_sync
from harness import free_port
from opshelp import BLOCKED_QUERY, blocking, http_get
from support import APP_DB, APP_PASSWORD, APP_USER, MD5_PASSWORD, MD5_USER, PostgresServer
from test_cli import clean_env, pooler_cmd

from pooler import log as pooler_log


@pytest.fixture(autouse=True)
def _no_leftover_backends(postgres: PostgresServer) -> None:
    wait_for_no_test_backends(postgres)


class PoolerProcess:
    """``pooler run -c pgbouncer.ini`` in a subprocess; its log (stderr) goes to a file we can read live."""

    def __init__(self, postgres: PostgresServer, workdir: Path, **settings: object) -> None:
        self.postgres = postgres
        self.workdir = workdir
        self.port = free_port()
        self.metrics_port = free_port()
        self.ini = workdir / "pgbouncer.ini"
        self.log_path = workdir / "pooler.log"
        self.users = {APP_USER: APP_PASSWORD}
        self.settings: dict[str, object] = {
            "listen_addr": "127.0.0.1", "listen_port": self.port, "metrics_port": self.metrics_port,
            "auth_type": "scram-sha-256", "auth_file": "userlist.txt", "admin_users": APP_USER,
            "default_pool_size": 5, "log_connections": 1, "log_disconnections": 1, "stats_period": 60,
        }
        self.settings.update(settings)
        self.write_config()
        self.proc: subprocess.Popen[bytes] | None = None

    def write_config(self, raw_extra: str = "") -> None:
        (self.workdir / "userlist.txt").write_text("".join(f'"{u}" "{p}"\n' for u, p in self.users.items()))
        lines = ["[databases]", f"{APP_DB} = host={self.postgres.host} port={self.postgres.port} dbname={APP_DB}",
                 "[pgbouncer]", *(f"{k} = {v}" for k, v in self.settings.items()), raw_extra]
        self.ini.write_text("\n".join(lines) + "\n")

    def start(self) -> None:
        env = clean_env(POOLER_METRICS_PORT=str(self.metrics_port))
        self.proc = subprocess.Popen(pooler_cmd("run", "-c", str(self.ini)), env=env, stdout=subprocess.DEVNULL,
                                     stderr=self.log_path.open("wb"))
        deadline = time.monotonic() + 20
        while True:
            assert self.proc.poll() is None, f"pooler exited early: {self.log_path.read_text()}"
            with suppress(psycopg.OperationalError), psycopg.connect(self.dsn(), connect_timeout=2):
                break
            assert time.monotonic() < deadline, "pooler did not start listening"
            time.sleep(0.05)

    def dsn(self, dbname: str = APP_DB, user: str = APP_USER, password: str = APP_PASSWORD) -> str:
        return f"postgresql://{user}:{password}@127.0.0.1:{self.port}/{dbname}"

    def connect(self, **kw: Any) -> psycopg.Connection[Any]:
        return psycopg.connect(self.dsn(), connect_timeout=5, **kw)

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def events(self) -> list[dict[str, Any]]:
        """Every log line, parsed as JSON (a line that is not JSON fails the test)."""
        return [json.loads(line) for line in self.log_path.read_text().splitlines() if line.strip()]

    def wait_for_event(self, event: str, timeout: float = 5.0, **fields: object) -> dict[str, Any]:
        def find() -> dict[str, Any] | None:
            for e in self.events():
                if e["event"] == event and all(e.get(k) == v for k, v in fields.items()):
                    return e
            return None

        return wait_until_sync(find, timeout=timeout, what=f"log event {event} {fields}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@contextmanager
def pooler_process(postgres: PostgresServer, tmp_path: Path, **settings: object) -> Iterator[PoolerProcess]:
    p = PoolerProcess(postgres, tmp_path, **settings)
    p.start()
    try:
        yield p
    finally:
        p.stop()


@pytest.fixture
def ledger(postgres: PostgresServer) -> Iterator[str]:
    """A table the shutdown tests write to; what Postgres has in it afterwards is the verdict."""
    with psycopg.connect(postgres.dsn(APP_DB, APP_USER, APP_PASSWORD), autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS ops_ledger")
        conn.execute("CREATE TABLE ops_ledger (client int, step int)")
    yield "ops_ledger"


def ledger_rows(postgres: PostgresServer) -> list[tuple[int, int]]:
    with psycopg.connect(postgres.dsn(APP_DB, APP_USER, APP_PASSWORD)) as conn:
        return [(int(a), int(b)) for a, b in conn.execute("SELECT client, step FROM ops_ledger ORDER BY 1, 2")]


def refused(p: PoolerProcess) -> bool:
    try:
        psycopg.connect(p.dsn(), connect_timeout=2).close()
    except psycopg.OperationalError:
        return True
    return False


# --- reload -------------------------------------------------------------------------------------------


def test_sighup_grows_the_pool_under_load_rereads_users_and_refuses_a_broken_file(
        postgres: PostgresServer, tmp_path: Path) -> None:
    activity = Activity(postgres)
    with pooler_process(postgres, tmp_path, default_pool_size=2) as p:
        conns = [p.connect(autocommit=True) for _ in range(4)]
        try:
            with blocking(postgres, APP_DB):
                futures = [in_thread(lambda c=c: c.execute(BLOCKED_QUERY)) for c in conns]
                wait_until_sync(lambda: len(activity.pids(APP_DB)) == 2, what="2 servers for 4 clients")
                time.sleep(0.2)
                assert len(activity.pids(APP_DB)) == 2
                p.settings["default_pool_size"] = 4
                p.users[MD5_USER] = MD5_PASSWORD
                p.write_config()
                p.signal(signal.SIGHUP)
                # The two queued clients get servers of their own: nobody was disconnected for it.
                wait_until_sync(lambda: len(activity.pids(APP_DB)) == 4, what="pool grown to 4 by SIGHUP")
            for future in futures:
                future.result(10)
            reloaded = p.wait_for_event("config reloaded")
            assert "default_pool_size" in reloaded["changed"]
            with psycopg.connect(p.dsn(user=MD5_USER, password=MD5_PASSWORD)) as conn:  # the new auth_file
                assert conn.execute("select current_user").fetchone() == (MD5_USER,)

            p.write_config(raw_extra="max_client_conn = plenty")
            p.signal(signal.SIGHUP)
            failed = p.wait_for_event("config reload failed, keeping the old config")
            assert "max_client_conn" in failed["error"] and "plenty" in failed["error"]
            assert failed["level"] == "error"
            assert p.alive()
            for conn in conns:  # connected clients never noticed either reload
                assert conn.execute("select 1").fetchone() == (1,)
            with psycopg.connect(p.dsn("pgbouncer"), autocommit=True) as admin:
                config = {row[0]: row[1] for row in admin.execute("SHOW CONFIG").fetchall()}
                assert (config["default_pool_size"], config["max_client_conn"]) == ("4", "100")
        finally:
            for conn in conns:
                conn.close()
            activity.close()


# --- shutdown -------------------------------------------------------------------------------------------


def run_transaction(p: PoolerProcess, client: int, started: threading.Barrier, hold: float,
                    outcome: dict[int, str]) -> None:
    """Insert step 1, hold the transaction open (idle in transaction), insert step 2, commit; then try once more."""
    try:
        with p.connect() as conn:
            conn.execute("INSERT INTO ops_ledger VALUES (%s, 1)", [client])
            started.wait(10)
            time.sleep(hold)
            conn.execute("INSERT INTO ops_ledger VALUES (%s, 2)", [client])
            conn.commit()
            outcome[client] = "committed"
            try:
                conn.execute("select 1")
                outcome[client] = "committed, still served"
            except psycopg.OperationalError as exc:
                outcome[client] = f"committed, then: {exc}"
    except psycopg.OperationalError as exc:
        outcome.setdefault(client, f"failed: {exc}")


def test_sigint_finishes_every_transaction_in_flight_then_exits(
        postgres: PostgresServer, tmp_path: Path, ledger: str) -> None:
    with pooler_process(postgres, tmp_path) as p:
        idle = p.connect(autocommit=True)
        idle.execute("select 1")
        outcome: dict[int, str] = {}
        started = threading.Barrier(5)
        workers = [threading.Thread(target=run_transaction, args=(p, i, started, 1.0, outcome)) for i in range(4)]
        for w in workers:
            w.start()
        started.wait(10)  # four transactions are open, each holding a server
        p.signal(signal.SIGINT)
        wait_until_sync(lambda: refused(p), timeout=2, what="the listening socket closed")
        with pytest.raises(psycopg.OperationalError, match=r"shutting down|server closed the connection"):
            for _ in range(50):  # the idle client (no transaction) is let go at once
                idle.execute("select 1")
                time.sleep(0.02)
        assert p.alive(), "exited with transactions still open"
        for w in workers:
            w.join(15)
        assert p.wait(10) == 0
        idle.close()
    assert sorted(outcome) == [0, 1, 2, 3]
    for client, result in outcome.items():
        assert result.startswith("committed, then:") and "shutting down" in result, (client, result)
    assert ledger_rows(postgres) == [(c, s) for c in range(4) for s in (1, 2)]  # none cut, none lost
    events = [e["event"] for e in p.events()]
    assert events.index("shutting down") < events.index("shut down")
    assert p.wait_for_event("shutting down")["mode"] == "wait_for_servers"


def test_sigterm_keeps_serving_connected_clients_until_they_leave(
        postgres: PostgresServer, tmp_path: Path, ledger: str) -> None:
    with pooler_process(postgres, tmp_path) as p:
        first, second = p.connect(autocommit=True), p.connect(autocommit=True)
        p.signal(signal.SIGTERM)
        wait_until_sync(lambda: refused(p), timeout=2, what="the listening socket closed")
        for i in range(5):  # new transactions, not only the ones in flight: the clients are still served
            first.execute("INSERT INTO ops_ledger VALUES (1, %s)", [i])
            second.execute("INSERT INTO ops_ledger VALUES (2, %s)", [i])
        first.close()
        time.sleep(0.3)
        assert p.alive(), "exited while a client was still connected"
        assert second.execute("select 1").fetchone() == (1,)
        second.close()
        assert p.wait(5) == 0
    assert len(ledger_rows(postgres)) == 10
    assert p.wait_for_event("shutting down")["mode"] == "wait_for_clients"


def test_a_second_signal_or_sigquit_is_immediate(postgres: PostgresServer, tmp_path: Path, ledger: str) -> None:
    for signals in ((signal.SIGINT, signal.SIGINT), (signal.SIGTERM, signal.SIGINT), (signal.SIGQUIT,)):
        run_dir = tmp_path / "-".join(s.name for s in signals)
        run_dir.mkdir()
        with pooler_process(postgres, run_dir) as p:
            in_tx = p.connect()
            in_tx.execute("INSERT INTO ops_ledger VALUES (9, 1)")  # open, never committed
            for sig in signals:
                p.signal(sig)
                time.sleep(0.2)
            assert p.wait(5) == 0, signals
            with pytest.raises(psycopg.OperationalError):
                in_tx.execute("INSERT INTO ops_ledger VALUES (9, 2)")
            in_tx.close()
        assert ledger_rows(postgres) == []  # the uncommitted transaction was rolled back, not half-applied


# --- logs ---------------------------------------------------------------------------------------------


def test_log_lines_are_json_with_the_connection_fields(postgres: PostgresServer, tmp_path: Path) -> None:
    logfile = tmp_path / "also.log"
    with pooler_process(postgres, tmp_path, stats_period=1, logfile=str(logfile)) as p:
        with p.connect(autocommit=True, application_name="logcheck") as conn:
            conn.execute("select 1")
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(p.dsn(password="wrong"))
        stats = p.wait_for_event("stats", timeout=5)
        p.signal(signal.SIGTERM)
        assert p.wait(5) == 0
    events = p.events()  # json.loads on every line: a line that is not JSON fails here
    assert all({"event", "level", "timestamp"} <= e.keys() for e in events)
    login = next(e for e in events if e["event"] == "login" and e["database"] == APP_DB)
    assert login["user"] == APP_USER and login["remote"].startswith("127.0.0.1:") and isinstance(login["client"], int)
    disconnect = next(e for e in events if e["event"] == "disconnect" and e["client"] == login["client"])
    assert disconnect["database"] == APP_DB and disconnect["remote"] == login["remote"]
    error = next(e for e in events if e["event"] == "pooler error")
    assert error["sqlstate"] == "28P01" and error["user"] == APP_USER and error["level"] == "warning"
    assert {"xacts_per_s", "queries_per_s", "wait_us", "xact_us", "query_us", "clients", "servers"} <= stats.keys()
    listening = next(e for e in events if e["event"] == "listening")
    assert listening["pooled_port"] == p.port and listening["metrics_port"] == p.metrics_port
    copied = [json.loads(line) for line in logfile.read_text().splitlines()]
    assert [e["event"] for e in copied] == [e["event"] for e in events]


def test_console_format_on_request_and_json_when_not_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    try:
        pooler_log.configure("auto")  # stdout and stderr are not terminals here
        pooler_log.log.info("login", client=7, remote="127.0.0.1:5000", database=APP_DB, user=APP_USER)
        line = json.loads(stream.getvalue().splitlines()[-1])
        assert (line["event"], line["client"], line["database"]) == ("login", 7, APP_DB)
        pooler_log.configure("console")
        pooler_log.log.info("login", client=8, remote="127.0.0.1:5001", database=APP_DB, user=APP_USER)
        text = stream.getvalue().splitlines()[-1]
        assert "login" in text and "client=8" in text and not text.startswith("{")
        pooler_log.configure("json", verbose=0)
        pooler_log.log.debug("hidden")
        pooler_log.configure("json", verbose=1)
        pooler_log.log.debug("shown")
        assert [json.loads(x)["event"] for x in stream.getvalue().splitlines()[-1:]] == ["shown"]
    finally:
        structlog.reset_defaults()


# --- pooler check ---------------------------------------------------------------------------------------


def check(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(pooler_cmd("check", *args), env=clean_env(**env), capture_output=True, text=True,
                          timeout=30, check=False)


def test_pooler_check_exit_codes(postgres: PostgresServer, tmp_path: Path) -> None:
    with pooler_process(postgres, tmp_path) as p:
        ok = check("-c", str(p.ini), POOLER_METRICS_PORT=str(p.metrics_port))
        assert (ok.returncode, ok.stdout.strip()) == (0, "ready")
        url = f"postgresql://{APP_USER}:{APP_PASSWORD}@127.0.0.1:{postgres.port}/{APP_DB}"
        login = check("--login", DATABASE_URL=url, POOLER_LISTEN_PORT=str(p.port))
        assert login.returncode == 0, login.stderr
        assert "SELECT 1" in login.stdout
        assert http_get(p.metrics_port, "/readyz")[0] == 200
        p.signal(signal.SIGTERM)
        assert p.wait(5) == 0
        down = check("-c", str(p.ini), POOLER_METRICS_PORT=str(p.metrics_port))
        assert down.returncode == 1
        assert len(down.stderr.strip().splitlines()) == 1 and "cannot reach" in down.stderr
        down = check("--login", DATABASE_URL=url, POOLER_LISTEN_PORT=str(p.port))
        assert down.returncode == 1 and "login through the pooler failed" in down.stderr
    nothing = check()  # metrics off (clean_env) and no DATABASE_URL: nothing to check with
    assert nothing.returncode == 2 and "DATABASE_URL" in nothing.stderr
