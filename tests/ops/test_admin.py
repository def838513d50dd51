"""The admin console (database ``pgbouncer``) through real clients: psycopg, psql and raw sockets.

Columns are checked by name, order and type OID against PgBouncer's, because pgbouncer_exporter and
scripts index them; counts are checked against what Postgres itself shows while a pool is frozen in a
known shape (clients held on an advisory lock).
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from backends import Activity, in_thread, wait_until_sync
from harness import RunningPooler, make_config, running_pooler
from opshelp import BLOCKED_QUERY, blocking, console, pool_row, show
from support import APP_DB, APP_PASSWORD, APP_USER, MD5_PASSWORD, MD5_USER, OTHER_DB, PostgresServer

from pooler import config as cfg
from pooler.ops.admin import AdminCommand, AdminSyntaxError, parse_command, parse_commands

pytestmark = pytest.mark.usefixtures("no_leftover_backends")

TEXT, INT4, INT8, NUMERIC = 25, 23, 20, 1700


@pytest.fixture
def pooler(postgres: PostgresServer) -> Any:
    config = make_config(postgres, default_pool_size=5, admin_users=(APP_USER,), stats_users=(MD5_USER,))
    with running_pooler(config) as p:
        yield p


def app_conn(p: RunningPooler, dbname: str = APP_DB, **kw: Any) -> psycopg.Connection[Any]:
    return psycopg.connect(p.dsn(dbname), connect_timeout=5, **kw)


# --- parsing ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    ("SHOW POOLS;", AdminCommand("show", "POOLS")),
    ("  show   stats_totals  ; ", AdminCommand("show", "stats_totals")),
    ("pause", AdminCommand("pause")),
    ("PAUSE appdb;", AdminCommand("pause", "appdb")),
    ('RESUME "my ""odd"" db"', AdminCommand("resume", 'my "odd" db')),
    ("KILL_CLIENT 42", AdminCommand("kill_client", "42")),
    ("SHUTDOWN WAIT_FOR_CLIENTS", AdminCommand("shutdown", "WAIT_FOR_CLIENTS")),
    ("SET default_pool_size = 5", AdminCommand("set", "default_pool_size", "5")),
    ("set server_check_query = 'select ''x'''", AdminCommand("set", "server_check_query", "select 'x'")),
    ("SET query_timeout TO 30s;", AdminCommand("set", "query_timeout", "30s")),
    ("SET admin_users = \"a,b\"", AdminCommand("set", "admin_users", "a,b")),
    ("", None),
    (" ; ", None),
])
def test_parse_command(text: str, expected: AdminCommand | None) -> None:
    assert parse_command(text) == expected


@pytest.mark.parametrize("text", ["SELECT * FROM pg_stat_activity", "SHOW POOLS; SHOW STATS", "SET = 1",
                                  "PAUSE a b", "KILL 'x", "1 2"])
def test_parse_command_refuses_what_is_not_one_command(text: str) -> None:
    with pytest.raises(AdminSyntaxError, match="use SHOW HELP"):
        parse_command(text)


@pytest.mark.parametrize(("text", "expected"), [
    ("SHOW POOLS; SHOW STATS;", [AdminCommand("show", "POOLS"), AdminCommand("show", "STATS")]),
    ("show pools;;show version", [AdminCommand("show", "pools"), AdminCommand("show", "version")]),
    ("SET server_check_query = 'select 1; select 2'; SHOW CONFIG",
     [AdminCommand("set", "server_check_query", "select 1; select 2"), AdminCommand("show", "CONFIG")]),
    ('PAUSE "a;b"; RESUME "a;b"', [AdminCommand("pause", "a;b"), AdminCommand("resume", "a;b")]),
    (" ; ;", []),
])
def test_parse_commands_splits_on_semicolons_outside_quotes(text: str, expected: list[AdminCommand]) -> None:
    assert parse_commands(text) == expected


def test_parse_commands_refuses_the_whole_query_for_one_bad_command() -> None:
    with pytest.raises(AdminSyntaxError, match="invalid command 'FLY away', use SHOW HELP"):
        parse_commands("SHOW POOLS; FLY away; SHOW STATS")


# --- columns: what exporters and scripts index ----------------------------------------------------------

SOCKET_COLUMNS = [
    ("type", TEXT), ("user", TEXT), ("database", TEXT), ("replication", TEXT), ("state", TEXT), ("addr", TEXT),
    ("port", INT4), ("local_addr", TEXT), ("local_port", INT4), ("connect_time", TEXT), ("request_time", TEXT),
    ("wait", INT4), ("wait_us", INT4), ("close_needed", INT4), ("ptr", TEXT), ("link", TEXT), ("remote_pid", INT4),
    ("tls", TEXT), ("application_name", TEXT), ("prepared_statements", INT4), ("id", INT4),
]
STATS_TOTALS = ["server_assignment_count", "xact_count", "query_count"]
EXPECTED_COLUMNS: dict[str, list[tuple[str, int]]] = {
    "POOLS": [("database", TEXT), ("user", TEXT)] + [(c, INT4) for c in (
        "cl_active", "cl_waiting", "cl_active_cancel_req", "cl_waiting_cancel_req", "sv_active", "sv_active_cancel",
        "sv_being_canceled", "sv_idle", "sv_used", "sv_tested", "sv_login", "maxwait", "maxwait_us")]
        + [("pool_mode", TEXT), ("load_balance_hosts", TEXT)],
    "DATABASES": [("name", TEXT), ("host", TEXT), ("port", INT4), ("database", TEXT), ("force_user", TEXT)]
        + [(c, INT4) for c in ("pool_size", "min_pool_size", "reserve_pool_size", "server_lifetime")]
        + [("pool_mode", TEXT), ("load_balance_hosts", TEXT)]
        + [(c, INT4) for c in ("max_connections", "current_connections", "max_client_connections",
                               "current_client_connections", "paused", "disabled")],
    "CLIENTS": SOCKET_COLUMNS,
    "SERVERS": SOCKET_COLUMNS,
    "USERS": [("name", TEXT), ("pool_size", TEXT), ("reserve_pool_size", TEXT), ("pool_mode", TEXT)]
        + [(c, INT4) for c in ("max_user_connections", "current_connections", "max_user_client_connections",
                               "current_client_connections")],
    "LISTS": [("list", TEXT), ("items", INT4)],
    "CONFIG": [("key", TEXT), ("value", TEXT), ("default", TEXT), ("changeable", TEXT)],
    "VERSION": [("version", TEXT)],
    "STATE": [("key", TEXT), ("value", TEXT)],
    "TOTALS": [("name", TEXT), ("value", NUMERIC)],
    "STATS": [("database", TEXT)] + [(f"total_{c}", NUMERIC) for c in (
        "server_assignment_count", "xact_count", "query_count", "received", "sent", "xact_time", "query_time",
        "wait_time", "client_parse_count", "server_parse_count", "bind_count", "client_login_count")]
        + [(f"avg_{c}", NUMERIC) for c in (
        "server_assignment_count", "xact_count", "query_count", "recv", "sent", "xact_time", "query_time",
        "wait_time", "client_parse_count", "server_parse_count", "bind_count", "client_login_count")],
    "STATS_TOTALS": [("database", TEXT)] + [(c, NUMERIC) for c in (
        "server_assignment_count", "xact_count", "query_count", "bytes_received", "bytes_sent", "xact_time",
        "query_time", "wait_time", "client_parse_count", "server_parse_count", "bind_count", "client_login_count")],
    "STATS_AVERAGES": [("database", TEXT)] + [(c, NUMERIC) for c in (
        "server_assignment_count", "xact_count", "query_count", "bytes_received", "bytes_sent", "xact_time",
        "query_time", "wait_time", "avg_client_parse_count", "avg_server_parse_count", "avg_bind_count",
        "avg_client_login_count")],
}


def test_every_show_has_pgbouncers_columns_and_types(pooler: RunningPooler) -> None:
    with app_conn(pooler) as app:
        app.execute("select 1")
        with console(pooler) as conn, conn.cursor() as cur:
            for what, expected in EXPECTED_COLUMNS.items():
                cur.execute(f"SHOW {what}")
                assert cur.description is not None
                got = [(c.name, c.type_code) for c in cur.description]
                assert got == expected, what
                assert cur.statusmessage == "SHOW"
                assert cur.fetchall(), f"SHOW {what} returned no row"
            cur.execute("SHOW HELP")  # a notice, no rows
            assert cur.description is None and cur.statusmessage == "SHOW"
            cur.execute("SHOW client_encoding")  # constants some drivers ask for
            assert cur.fetchall() == [("UTF8",)]


def test_help_notice_and_welcome_parameters(pooler: RunningPooler) -> None:
    notices: list[tuple[str | None, str | None]] = []
    with console(pooler) as conn:
        conn.add_notice_handler(lambda d: notices.append((d.message_primary, d.message_detail)))
        conn.execute("SHOW HELP")
        assert conn.info.parameter_status("server_version") is not None
        assert conn.info.parameter_status("server_version").endswith("/pooler")  # type: ignore[union-attr]
        assert conn.info.parameter_status("client_encoding") == "UTF8"
    assert notices and notices[0][0] == "Console usage"
    assert "SHUTDOWN WAIT_FOR_SERVERS|WAIT_FOR_CLIENTS" in (notices[0][1] or "")


def test_psql_reads_it_like_pgbouncer(pooler: RunningPooler, psql: Path) -> None:
    env = {**os.environ, "PGPASSWORD": APP_PASSWORD}
    base = [str(psql), "-h", "127.0.0.1", "-p", str(pooler.port), "-U", APP_USER, "-d", "pgbouncer", "-X"]
    with app_conn(pooler) as app:
        app.execute("select 1")
        expanded = subprocess.run([*base, "-x", "-c", "SHOW POOLS"], env=env, capture_output=True, text=True,
                                  timeout=30, check=True).stdout
        assert "-[ RECORD 1 ]" in expanded
        assert "cl_active             | 1" in expanded and "pool_mode             | transaction" in expanded
        # A script's way: unaligned, tuples only, one field per column.
        rows = subprocess.run([*base, "-At", "-F", ",", "-c", "SHOW DATABASES"], env=env, capture_output=True,
                              text=True, timeout=30, check=True).stdout.splitlines()
        by_name = {line.split(",")[0]: line.split(",") for line in rows}
        assert set(by_name) == {APP_DB, OTHER_DB, "pgbouncer"}
        assert by_name[APP_DB][12] == "1"  # current_connections: the one server of the linked client
        # psql's \x toggled inside one session, and an unknown command in the same script.
        script = subprocess.run([*base, "-c", "\\x", "-c", "SHOW VERSION", "-c", "SHOW NONSENSE"], env=env,
                                capture_output=True, text=True, timeout=30, check=False)
        assert "version | pooler" in script.stdout
        assert "unknown SHOW subject: NONSENSE" in script.stderr and "HINT:" in script.stderr


def test_psql_runs_several_commands_in_one_query(pooler: RunningPooler, psql: Path) -> None:
    env = {**os.environ, "PGPASSWORD": APP_PASSWORD}
    base = [str(psql), "-h", "127.0.0.1", "-p", str(pooler.port), "-U", APP_USER, "-d", "pgbouncer", "-X", "-At"]
    both = subprocess.run([*base, "-c", "SHOW VERSION; SHOW LISTS;"], env=env, capture_output=True, text=True,
                          timeout=30, check=False)
    assert both.returncode == 0, both.stderr
    lines = both.stdout.splitlines()  # psql >= 15 prints every result set of a multi-statement query
    assert lines[0].startswith("pooler ") and "databases|3" in lines[1:]
    bad = subprocess.run([*base, "-c", "SHOW VERSION; SHOW NONSENSE; PAUSE"], env=env, capture_output=True,
                         text=True, timeout=30, check=False)
    assert bad.returncode == 1
    assert "unknown SHOW subject: NONSENSE" in bad.stderr
    assert pooler.call(lambda pl: pl.paused) is False  # nothing after the failing command ran
    wrong = subprocess.run([*base, "-c", "SHOW POOLS; FLY away"], env=env, capture_output=True, text=True,
                           timeout=30, check=False)
    assert wrong.returncode == 1 and "invalid command 'FLY away', use SHOW HELP;" in wrong.stderr
    assert wrong.stdout == ""  # refused before anything ran


def test_several_commands_one_result_set_each(pooler: RunningPooler) -> None:
    with console(pooler) as conn, conn.cursor() as cur:
        cur.execute("SHOW VERSION; SHOW LISTS; SHOW STATE")
        names = []
        while True:
            assert cur.description is not None
            names.append([c.name for c in cur.description])
            assert cur.fetchall()
            if not cur.nextset():
                break
        assert names == [["version"], ["list", "items"], ["key", "value"]]
        cur.execute("PAUSE; RESUME; SHOW VERSION")  # PAUSE waits (a task): the rest runs after it
        tags = [cur.statusmessage]
        while cur.nextset():
            tags.append(cur.statusmessage)
        assert tags == ["PAUSE", "RESUME", "SHOW"]
        assert str(cur.fetchall()[0][0]).startswith("pooler")


# --- who may do what ------------------------------------------------------------------------------------


def test_stats_users_show_only_and_others_not_allowed(pooler: RunningPooler, postgres: PostgresServer) -> None:
    with console(pooler, MD5_USER, MD5_PASSWORD) as conn:
        assert conn.execute("SHOW STATE").fetchall()
        with pytest.raises(psycopg.errors.ProtocolViolation, match="admin access needed"):
            conn.execute("PAUSE")
        assert conn.execute("SHOW VERSION").fetchone() is not None  # the session goes on
    config = make_config(postgres, admin_users=("someone_else",))
    with running_pooler(config) as p, pytest.raises(psycopg.OperationalError, match="not allowed"):
        console(p)
    errors = pooler.call(lambda pl: dict(pl.error_counts))
    assert errors == {"admin_not_allowed": 1}


def test_unknown_command_lists_the_commands(pooler: RunningPooler) -> None:
    with console(pooler) as conn:
        with pytest.raises(psycopg.errors.ProtocolViolation) as info:
            conn.execute("SELECT * FROM pg_stat_activity")
        assert "invalid command" in str(info.value) and "use SHOW HELP" in str(info.value)
        assert info.value.diag.message_hint is not None
        assert "PAUSE [db]" in info.value.diag.message_hint and "SHOW HELP|CONFIG" in info.value.diag.message_hint
        with pytest.raises(psycopg.errors.ProtocolViolation, match="invalid command"):
            conn.execute("FLY me to the moon")
        assert conn.execute("SHOW STATE").fetchall()
    # counted apart from real protocol violations, which an alert may watch
    assert pooler.call(lambda pl: dict(pl.error_counts)) == {"admin_command": 2}


def test_extended_protocol_gets_an_error_and_the_session_goes_on(pooler: RunningPooler) -> None:
    with console(pooler) as conn:
        with pytest.raises(psycopg.errors.ProtocolViolation, match="extended query protocol not supported"):
            conn.execute("SHOW POOLS", prepare=True)
        with pytest.raises(psycopg.errors.ProtocolViolation, match="extended query protocol"):
            conn.execute("SHOW %s", ["POOLS"])
        assert [r[0] for r in conn.execute("SHOW STATE").fetchall()] == ["active", "paused", "suspended"]


# --- counts that match reality ----------------------------------------------------------------------------


def test_30_clients_on_a_pool_of_5(pooler: RunningPooler, postgres: PostgresServer,
                                   activity: Activity) -> None:
    conns = [app_conn(pooler, autocommit=True) for _ in range(30)]
    try:
        with blocking(postgres, APP_DB) as blocker:
            futures = [in_thread(lambda c=c: c.execute(BLOCKED_QUERY).fetchall()) for c in conns]
            wait_until_sync(lambda: pool_row(pooler, APP_DB)["cl_waiting"] == 25, what="25 queued clients")
            row = pool_row(pooler, APP_DB)
            assert (row["cl_active"], row["cl_waiting"], row["sv_active"], row["sv_idle"], row["sv_login"]) == (
                5, 25, 5, 0, 0)
            assert row["maxwait"] >= 0 and 0 <= row["maxwait_us"] < 1_000_000
            assert len(activity.pids(APP_DB)) == 5  # Postgres agrees: five backends
            clients = [r for r in show(pooler, "CLIENTS") if r["database"] == APP_DB]
            assert sorted(r["state"] for r in clients) == ["active"] * 5 + ["waiting"] * 25
            servers = show(pooler, "SERVERS")
            assert [r["state"] for r in servers] == ["active"] * 5
            assert {r["remote_pid"] for r in servers} == set(activity.pids(APP_DB))
            linked = {r["link"] for r in clients if r["state"] == "active"}
            assert linked == {r["ptr"] for r in servers}  # each active client points at its server
            lists = {r["list"]: r["items"] for r in show(pooler, "LISTS")}
            assert lists["used_clients"] == 31 and lists["used_servers"] == 5  # + this console session
            databases = {r["name"]: r for r in show(pooler, "DATABASES")}
            assert databases[APP_DB]["current_connections"] == 5
            assert databases[APP_DB]["current_client_connections"] == 30
            blocker.release()
            for future in futures:
                future.result(15)
        row = pool_row(pooler, APP_DB)
        assert (row["cl_active"], row["cl_waiting"], row["sv_active"], row["sv_idle"]) == (30, 0, 0, 5)
        assert [r["state"] for r in show(pooler, "CLIENTS") if r["database"] == APP_DB] == ["idle"] * 30
    finally:
        for conn in conns:
            conn.close()


def test_stats_count_exactly_what_ran(pooler: RunningPooler) -> None:
    with app_conn(pooler, autocommit=True, prepare_threshold=None) as conn:  # simple protocol, one Query each
        for _ in range(20):
            conn.execute("select 1")
        with conn.transaction():
            conn.execute("select 1")
            conn.execute("select 2")
    stats = {r["database"]: r for r in show(pooler, "STATS")}[APP_DB]
    assert stats["total_xact_count"] == 21  # 20 autocommit statements + one BEGIN..COMMIT
    assert stats["total_query_count"] == 24  # + BEGIN, select, select, COMMIT inside it
    assert stats["total_server_assignment_count"] == 21
    assert stats["total_client_login_count"] == 1
    assert stats["total_received"] > 0 and stats["total_sent"] > stats["total_received"]
    assert stats["total_xact_time"] > 0 and stats["total_query_time"] > 0  # µs
    totals = {r["database"]: r for r in show(pooler, "STATS_TOTALS")}[APP_DB]
    assert (totals["xact_count"], totals["query_count"], totals["bytes_received"]) == (
        21, 24, stats["total_received"])
    overall = {r["name"]: r["value"] for r in show(pooler, "TOTALS")}
    assert overall["total_xact_count"] == 21 and overall["total_client_bytes"] == stats["total_received"]
    averages = {r["database"]: r for r in show(pooler, "STATS_AVERAGES")}[APP_DB]
    assert averages["xact_count"] > 0  # per second, over the (first) stats period
    assert averages["xact_time"] > 0  # µs per transaction


# --- control ----------------------------------------------------------------------------------------------


def test_pause_waits_for_the_transaction_in_flight_and_resume_lets_the_queue_go(
        pooler: RunningPooler, activity: Activity) -> None:
    with app_conn(pooler) as in_tx, app_conn(pooler, autocommit=True) as later, console(pooler) as admin:
        in_tx.execute("CREATE TEMP TABLE t (x int)")  # a transaction is open on a server now
        paused = threading.Event()
        pause = in_thread(lambda: (admin.execute("PAUSE appdb"), paused.set()))
        time.sleep(0.3)
        assert not paused.is_set(), "PAUSE returned while a transaction was still open"
        assert show(pooler, "STATE")[1]["value"] == "no"  # a per-database pause is not a global one
        assert {r["name"]: r["paused"] for r in show(pooler, "DATABASES")}[APP_DB] == 1
        queued = in_thread(lambda: later.execute("select 42").fetchone())
        in_tx.execute("INSERT INTO t VALUES (1)")  # the transaction in flight still runs
        in_tx.commit()
        pause.result(10)
        wait_until_sync(lambda: not activity.pids(APP_DB), what="servers of the paused database closed")
        time.sleep(0.2)
        assert not queued.done(), "a query ran on a paused database"
        assert pool_row(pooler, APP_DB)["cl_waiting"] == 1
        admin.execute("RESUME appdb")
        assert queued.result(10) == (42,)
        with pytest.raises(psycopg.errors.ProtocolViolation, match="not paused"):
            admin.execute("RESUME appdb")


def test_global_pause_state_and_errors(pooler: RunningPooler) -> None:
    with console(pooler) as admin:
        admin.execute("PAUSE")
        assert {r["key"]: r["value"] for r in show(pooler, "STATE")} == {
            "active": "no", "paused": "yes", "suspended": "no"}
        with pytest.raises(psycopg.errors.ProtocolViolation, match="already suspended/paused"):
            admin.execute("PAUSE")
        admin.execute("RESUME")
        with pytest.raises(psycopg.errors.ProtocolViolation, match="not paused"):
            admin.execute("RESUME")
        with pytest.raises(psycopg.errors.ProtocolViolation, match="admin database"):
            admin.execute("PAUSE pgbouncer")
    with app_conn(pooler, autocommit=True) as conn:
        assert conn.execute("select 1").fetchone() == (1,)


def test_disable_refuses_new_logins_only(pooler: RunningPooler) -> None:
    with app_conn(pooler, autocommit=True) as connected, console(pooler) as admin:
        admin.execute("DISABLE appdb")
        with pytest.raises(psycopg.OperationalError, match='database "appdb" is disabled'):
            app_conn(pooler)
        assert connected.execute("select 1").fetchone() == (1,)
        assert {r["name"]: r["disabled"] for r in show(pooler, "DATABASES")}[APP_DB] == 1
        with pytest.raises(psycopg.errors.ProtocolViolation, match="a database is required"):
            admin.execute("DISABLE")
        admin.execute("ENABLE appdb")
        with app_conn(pooler) as again:
            assert again.execute("select 1").fetchone() == (1,)


def test_kill_client_and_kill_database(pooler: RunningPooler, activity: Activity) -> None:
    with app_conn(pooler, autocommit=True) as victim, app_conn(pooler, autocommit=True) as bystander, \
            app_conn(pooler, OTHER_DB, autocommit=True) as other, console(pooler) as admin:
        victim.execute("select 1")
        ids = {r["id"] for r in show(pooler, "CLIENTS") if r["database"] == APP_DB}
        victim_id = min(ids)
        admin.execute(f"KILL_CLIENT {victim_id}")
        with pytest.raises(psycopg.OperationalError, match="admin forced disconnect"):
            victim.execute("select 1")
        assert bystander.execute("select 1").fetchone() == (1,)
        with pytest.raises(psycopg.errors.ProtocolViolation, match="client not found"):
            admin.execute(f"KILL_CLIENT {victim_id}")
        admin.execute("KILL appdb")
        with pytest.raises(psycopg.OperationalError, match="killed"):
            bystander.execute("select 1")
        assert other.execute("select 1").fetchone() == (1,)  # another database is untouched
        wait_until_sync(lambda: not activity.pids(APP_DB), what="appdb's servers closed")
        assert {r["name"]: r["paused"] for r in show(pooler, "DATABASES")}[APP_DB] == 1
        admin.execute("RESUME appdb")
        with app_conn(pooler, autocommit=True) as again:
            assert again.execute("select 1").fetchone() == (1,)


def test_reconnect_closes_servers_once_released_and_wait_close_waits(
        pooler: RunningPooler, activity: Activity) -> None:
    with app_conn(pooler) as conn, console(pooler) as admin:
        before = conn.execute("select pg_backend_pid()").fetchone()
        admin.execute("RECONNECT appdb")
        assert [r["close_needed"] for r in show(pooler, "SERVERS")] == [1]
        done = in_thread(lambda: admin.execute("WAIT_CLOSE appdb"))
        time.sleep(0.3)
        assert not done.done(), "WAIT_CLOSE returned while the old server was still in a transaction"
        conn.commit()
        done.result(10)
        after = conn.execute("select pg_backend_pid()").fetchone()
        assert after != before
        conn.commit()
    assert before is not None and before[0] not in activity.pids(APP_DB)


def test_set_changes_a_setting_live(pooler: RunningPooler, postgres: PostgresServer,
                                    activity: Activity) -> None:
    with console(pooler) as admin:
        cur = admin.execute("SET default_pool_size = 2")
        assert cur.statusmessage == "SET default_pool_size=2"
        config = {r["key"]: r for r in show(pooler, "CONFIG")}
        assert config["default_pool_size"]["value"] == "2" and config["default_pool_size"]["default"] == "20"
        assert config["listen_port"]["changeable"] == "no"
        with pytest.raises(psycopg.errors.ProtocolViolation, match="expected a whole number"):
            admin.execute("SET default_pool_size = lots")
        with pytest.raises(psycopg.errors.ProtocolViolation, match="cannot be changed at run time"):
            admin.execute("SET listen_port = 1")
        with pytest.raises(psycopg.errors.ProtocolViolation, match="unknown setting"):
            admin.execute("SET no_such_thing = 1")
        admin.execute("SET client_encoding = 'UTF8'")  # a driver's habit: accepted, ignored
    conns = [app_conn(pooler, autocommit=True) for _ in range(4)]
    try:
        with blocking(postgres, APP_DB):
            futures = [in_thread(lambda c=c: c.execute(BLOCKED_QUERY)) for c in conns]
            wait_until_sync(lambda: pool_row(pooler, APP_DB)["cl_waiting"] == 2, what="two queued")
            assert len(activity.pids(APP_DB)) == 2
            with console(pooler) as admin:
                admin.execute("SET default_pool_size = 4")  # the queued clients get servers at once
            wait_until_sync(lambda: len(activity.pids(APP_DB)) == 4, what="pool grown to 4")
        for future in futures:
            future.result(10)
    finally:
        for conn in conns:
            conn.close()


def test_reload_rereads_the_config_and_a_bad_one_changes_nothing(
        pooler: RunningPooler, postgres: PostgresServer) -> None:
    current: dict[str, Any] = {"config": pooler.config}

    def loader() -> cfg.Config:
        value = current["config"]
        if isinstance(value, Exception):
            raise value
        assert isinstance(value, cfg.Config)
        return value

    pooler.call(lambda pl: setattr(pl, "config_loader", loader))
    current["config"] = cfg.replace_settings(pooler.config, default_pool_size=7, query_wait_timeout="45s")
    with app_conn(pooler, autocommit=True) as conn, console(pooler) as admin:
        conn.execute("select 1")
        assert admin.execute("RELOAD").statusmessage == "RELOAD"
        assert pool_row(pooler, APP_DB)["cl_active"] == 1
        config = {r["key"]: r["value"] for r in show(pooler, "CONFIG")}
        assert (config["default_pool_size"], config["query_wait_timeout"]) == ("7", "45")
        assert {r["name"]: r["pool_size"] for r in show(pooler, "DATABASES")}[APP_DB] == 7
        current["config"] = cfg.ConfigError("pgbouncer.ini", "default_pool_size", "expected a whole number, got 'x'")
        with pytest.raises(psycopg.errors.ConfigFileError, match=r"RELOAD failed.*default_pool_size"):
            admin.execute("RELOAD")
        assert {r["key"]: r["value"] for r in show(pooler, "CONFIG")}["default_pool_size"] == "7"
        current["config"] = cfg.replace_settings(pooler.config, auth_file="/nonexistent/userlist.txt")
        with pytest.raises(psycopg.errors.ConfigFileError, match="auth_file"):
            admin.execute("RELOAD")
        assert conn.execute("select 1").fetchone() == (1,)  # the connected client never noticed


def test_shutdown_wait_for_clients_from_the_console(pooler: RunningPooler) -> None:
    with app_conn(pooler, autocommit=True) as conn:
        with console(pooler) as admin:
            assert admin.execute("SHUTDOWN WAIT_FOR_CLIENTS").statusmessage == "SHUTDOWN"
        with pytest.raises(psycopg.OperationalError):
            app_conn(pooler)  # not accepting any more
        assert conn.execute("select 1").fetchone() == (1,)  # still served
        assert not pooler.call(lambda pl: pl.finished.is_set())
    wait_until_sync(lambda: pooler.call(lambda pl: pl.finished.is_set()), what="shut down after the last client")


def test_shutdown_now_from_the_console_closes_everyone(pooler: RunningPooler) -> None:
    with app_conn(pooler, autocommit=True) as conn, console(pooler) as admin:
        conn.execute("select 1")
        with pytest.raises(psycopg.OperationalError, match="shutting down"):
            admin.execute("SHUTDOWN")  # never answered: the console is closed with everyone else
        wait_until_sync(lambda: pooler.call(lambda pl: pl.finished.is_set()), what="shut down")
        with pytest.raises(psycopg.OperationalError):
            conn.execute("select 1")


def test_server_ids_are_stable_and_semicolons_are_fine(pooler: RunningPooler) -> None:
    with app_conn(pooler) as conn, console(pooler) as admin:
        pid = conn.execute("select pg_backend_pid()").fetchone()
        first = admin.execute("SHOW SERVERS;").fetchall()  # pgbouncer_exporter's spelling
        second = admin.execute("show servers ;").fetchall()
        assert len(first) == 1 and first[0][-1] == second[0][-1] >= 1  # id
        assert pid is not None and first[0][16] == pid[0]  # remote_pid is the backend's pid
        conn.commit()
        assert admin.execute("SHOW LISTS;").fetchall()
