"""PgBouncer's documented behaviour where pooler used to differ (issue 10, item 8), with its exact texts.

The texts are PgBouncer's (src/janitor.c, src/client.c, include/pktbuf.h); every test runs real
clients against the real Postgres.
"""

from __future__ import annotations

import contextlib
import grp
import os
import socket
import stat
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from backends import Activity, in_thread, wait_until_sync
from gate import gate_to
from harness import RunningPooler, make_config, running_pooler
from rawclient import RawClient
from support import APP_DB, APP_PASSWORD, APP_USER, MD5_PASSWORD, MD5_USER, OTHER_DB, PostgresServer

from pooler.config import PGBOUNCER_IGNORED_SETTINGS, DatabaseConfig, PoolMode, UserConfig, UserlistEntry

pytestmark = pytest.mark.usefixtures("no_leftover_backends")


def fatal_of(fn: Any) -> psycopg.OperationalError:
    with pytest.raises(psycopg.OperationalError) as info:
        fn()
    return info.value


# --- timeouts and the queue ----------------------------------------------------------------------------------


def test_transaction_timeout_ends_a_busy_transaction_with_pgbouncers_words(postgres: PostgresServer) -> None:
    config = make_config(postgres, transaction_timeout=0.6, idle_transaction_timeout=5)
    with running_pooler(config) as p, psycopg.connect(p.dsn()) as conn:
        conn.execute("select 1")  # BEGIN (psycopg's implicit transaction) + a query
        started = time.monotonic()

        def keep_busy() -> None:
            while time.monotonic() - started < 5:
                conn.execute("select pg_sleep(0.05)")  # never idle long, never one long query

        error = fatal_of(keep_busy)
        assert (error.diag.severity, error.diag.message_primary) == ("FATAL", "transaction timeout")
        assert 0.55 <= time.monotonic() - started < 2.5
        with psycopg.connect(p.dsn(), autocommit=True) as fresh:  # the pool serves on
            assert fresh.execute("select 1").fetchone() == (1,)


def test_transaction_timeout_per_user_overrides_the_global(postgres: PostgresServer) -> None:
    users = {APP_USER: UserConfig(APP_USER, transaction_timeout=0.4)}
    with running_pooler(make_config(postgres, users=users)) as p, psycopg.connect(p.dsn()) as conn:
        conn.execute("select 1")
        time.sleep(0.1)
        error = fatal_of(lambda: conn.execute("select pg_sleep(1.5)"))
        assert (error.diag.severity, error.diag.message_primary) == ("FATAL", "transaction timeout")


def test_query_wait_notify_tells_a_queued_client_once(postgres: PostgresServer) -> None:
    config = make_config(postgres, default_pool_size=1, query_wait_notify=0.3)
    with running_pooler(config) as p, psycopg.connect(p.dsn()) as holder, \
            psycopg.connect(p.dsn(), autocommit=True) as queued:
        holder.execute("select 1")  # holds the only server in a transaction
        notices: list[tuple[str | None, str | None, str | None]] = []
        queued.add_notice_handler(lambda d: notices.append((d.severity, d.sqlstate, d.message_primary)))
        waiting = in_thread(lambda: queued.execute("select 'served'").fetchone())
        time.sleep(0.8)
        holder.commit()
        assert waiting.result(5) == ("served",)
        assert notices == [
            ("NOTICE", "00000", "No server connection available in postgres backend, client being queued")]
        assert queued.execute("select 2").fetchone() == (2,)  # not queued: no notice
        assert len(notices) == 1


def test_query_timeout_counts_the_time_spent_queued(postgres: PostgresServer) -> None:
    config = make_config(postgres, default_pool_size=1, query_timeout=0.5, query_wait_timeout=10)
    with running_pooler(config) as p, psycopg.connect(p.dsn()) as holder, \
            psycopg.connect(p.dsn(), autocommit=True) as queued:
        holder.execute("select 1")
        started = time.monotonic()
        error = fatal_of(lambda: queued.execute("select 1"))
        assert error.diag.message_primary == "query_timeout"  # PgBouncer's spelling for a queued client
        assert 0.45 <= time.monotonic() - started < 2.5
        holder.rollback()


# --- client connection caps ----------------------------------------------------------------------------------


def test_max_db_client_connections_refuses_the_client_over_the_cap(postgres: PostgresServer) -> None:
    dbs = {
        APP_DB: DatabaseConfig(APP_DB, host=postgres.host, port=postgres.port),
        OTHER_DB: DatabaseConfig(OTHER_DB, host=postgres.host, port=postgres.port, max_db_client_connections=1),
    }
    with running_pooler(make_config(postgres, databases=dbs, max_db_client_connections=2)) as p:
        first, second = psycopg.connect(p.dsn()), psycopg.connect(p.dsn(user=MD5_USER, password=MD5_PASSWORD))
        error = fatal_of(lambda: psycopg.connect(p.dsn()))
        assert "FATAL:  client connections exceeded (max_db_client_connections)" in str(error)
        other = psycopg.connect(p.dsn(OTHER_DB))  # its own cap: 1
        error = fatal_of(lambda: psycopg.connect(p.dsn(OTHER_DB)))
        assert "FATAL:  client connections exceeded (max_db_client_connections)" in str(error)
        first.close()
        wait_until_sync(lambda: p.call(lambda pl: pl.client_limits.by_db[APP_DB] == 1), what="the slot to free")
        with psycopg.connect(p.dsn(), autocommit=True) as again:
            assert again.execute("select 1").fetchone() == (1,)
        second.close()
        other.close()


def test_max_user_client_connections_global_and_per_user(postgres: PostgresServer) -> None:
    users = {MD5_USER: UserConfig(MD5_USER, max_user_client_connections=1)}
    with running_pooler(make_config(postgres, users=users, max_user_client_connections=2)) as p:
        conns = [psycopg.connect(p.dsn(APP_DB)), psycopg.connect(p.dsn(OTHER_DB))]  # across databases
        error = fatal_of(lambda: psycopg.connect(p.dsn(APP_DB)))
        assert "FATAL:  client connections exceeded (max_user_client_connections)" in str(error)
        conns.append(psycopg.connect(p.dsn(user=MD5_USER, password=MD5_PASSWORD)))
        error = fatal_of(lambda: psycopg.connect(p.dsn(user=MD5_USER, password=MD5_PASSWORD)))
        assert "FATAL:  client connections exceeded (max_user_client_connections)" in str(error)
        for conn in conns:
            conn.close()


# --- TCP options ---------------------------------------------------------------------------------------------


def _options(sock: Any) -> tuple[int, ...]:
    return (sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
            sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
            sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
            sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
            sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT))


def _client_and_server_options(p: RunningPooler) -> tuple[tuple[int, ...], tuple[int, ...]]:
    def read(pooler: Any) -> tuple[tuple[int, ...], tuple[int, ...]]:
        client = next(c for c in pooler.clients if c.user == APP_USER)
        server = next(iter(pooler.pools[(APP_DB, APP_USER)].servers))
        return (_options(client.transport.get_extra_info("socket")),
                _options(server.transport.get_extra_info("socket")))

    return p.call(read)


@pytest.mark.skipif(not hasattr(socket, "TCP_USER_TIMEOUT"), reason="TCP_USER_TIMEOUT is Linux's")
def test_tcp_keepalive_options_are_set_on_client_and_server_sockets(postgres: PostgresServer) -> None:
    config = make_config(postgres, tcp_keepalive=True, tcp_keepidle=7, tcp_keepintvl=3, tcp_keepcnt=4,
                         tcp_user_timeout=5000)
    with running_pooler(config) as p, psycopg.connect(p.dsn(password=APP_PASSWORD), autocommit=True) as conn:
        conn.execute("select 1")
        client, server = _client_and_server_options(p)
        assert client == server == (1, 7, 3, 4, 5000)
    with running_pooler(make_config(postgres, tcp_keepalive=False)) as p, \
            psycopg.connect(p.dsn(), autocommit=True) as conn:
        conn.execute("select 1")
        client, server = _client_and_server_options(p)
        assert client[0] == server[0] == 0


@pytest.mark.skipif(not hasattr(socket, "TCP_USER_TIMEOUT"), reason="TCP_USER_TIMEOUT is Linux's")
def test_reloaded_tcp_options_reach_the_clients_accepted_after_the_reload(postgres: PostgresServer) -> None:
    """Clients take their TCP options from the listening socket (Linux): a RELOAD must re-tune it."""
    with running_pooler(make_config(postgres, tcp_keepidle=7)) as p:
        p.reload(make_config(postgres, tcp_keepidle=11, tcp_keepintvl=2, tcp_keepcnt=6, tcp_user_timeout=7000))
        with psycopg.connect(p.dsn(password=APP_PASSWORD), autocommit=True) as conn:
            conn.execute("select 1")
            client, server = _client_and_server_options(p)
        assert client == server == (1, 11, 2, 6, 7000)


@pytest.mark.skipif(not hasattr(socket, "TCP_USER_TIMEOUT"), reason="TCP_USER_TIMEOUT is Linux's")
def test_tcp_options_reloaded_to_0_give_new_clients_the_os_defaults_again(postgres: PostgresServer) -> None:
    with socket.socket() as fresh:
        defaults = _options(fresh)[1:]
    with running_pooler(make_config(postgres, tcp_keepidle=7, tcp_keepintvl=3, tcp_keepcnt=4,
                                    tcp_user_timeout=5000)) as p:
        p.reload(make_config(postgres))  # every tcp_* back to 0: the OS default
        with psycopg.connect(p.dsn(password=APP_PASSWORD), autocommit=True) as conn:
            conn.execute("select 1")
            client, _ = _client_and_server_options(p)
        assert client == (1, *defaults)


# --- settings that were ignored ------------------------------------------------------------------------------


def test_scram_iterations_sets_the_count_of_verifiers_derived_from_plain_secrets(postgres: PostgresServer) -> None:
    with running_pooler(make_config(postgres, scram_iterations=5000)) as p:  # app's secret is plain
        with RawClient(p.port) as raw:
            messages = raw.login(APP_USER, APP_PASSWORD, APP_DB)
        server_first = [m.payload for m in messages if m.kind == "R" and m.payload[:4] == b"\x00\x00\x00\x0b"]
        assert len(server_first) == 1 and b",i=5000" in server_first[0]


def test_unix_socket_mode_and_group(postgres: PostgresServer, tmp_path: Path) -> None:
    group = grp.getgrgid(os.getgid()).gr_name
    config = make_config(postgres, unix_socket_dir=str(tmp_path), unix_socket_mode="0770", unix_socket_group=group)
    with running_pooler(config) as p:
        path = tmp_path / f".s.PGSQL.{p.port}"
        info = path.stat()
        assert stat.S_IMODE(info.st_mode) == 0o770
        assert info.st_gid == os.getgid()
        with psycopg.connect(host=str(tmp_path), port=p.port, dbname=APP_DB, user=APP_USER, password=APP_PASSWORD,
                             autocommit=True) as conn:
            assert conn.execute("select 1").fetchone() == (1,)


def test_application_name_add_host(postgres: PostgresServer) -> None:
    with running_pooler(make_config(postgres, application_name_add_host=True)) as p:
        with psycopg.connect(p.dsn(application_name="billing"), autocommit=True) as conn:
            (name,) = conn.execute("show application_name").fetchone() or ("",)
            local_port = conn.pgconn.socket and socket.socket(fileno=os.dup(conn.pgconn.socket)).getsockname()[1]
            assert name == f"billing - 127.0.0.1:{local_port}"
        with psycopg.connect(p.dsn(), autocommit=True) as conn:
            (name,) = conn.execute("show application_name").fetchone() or ("",)
            assert name.startswith("app - 127.0.0.1:")


def test_admin_console_peer_login_as_pgbouncer_over_the_unix_socket(postgres: PostgresServer, tmp_path: Path) -> None:
    with running_pooler(make_config(postgres, unix_socket_dir=str(tmp_path))) as p:
        with psycopg.connect(host=str(tmp_path), port=p.port, dbname="pgbouncer", user="pgbouncer",
                             autocommit=True) as console:  # no password: same OS user as the pooler
            rows = console.execute("SHOW DATABASES").fetchall()
            assert any(row[0] == APP_DB for row in rows)
            console.execute(f"RECONNECT {APP_DB}")  # an admin command, not only SHOW
        with pytest.raises(psycopg.OperationalError):  # over TCP the peer is unknown: a password is needed
            psycopg.connect(p.dsn("pgbouncer", "pgbouncer", "whatever"))


def test_per_database_server_lifetime(postgres: PostgresServer, activity: Activity) -> None:
    dbs = {
        APP_DB: DatabaseConfig(APP_DB, host=postgres.host, port=postgres.port, server_lifetime=0.3),
        OTHER_DB: DatabaseConfig(OTHER_DB, host=postgres.host, port=postgres.port),
    }
    with running_pooler(make_config(postgres, databases=dbs, server_lifetime=3600)) as p, \
            psycopg.connect(p.dsn(APP_DB), autocommit=True) as short, \
            psycopg.connect(p.dsn(OTHER_DB), autocommit=True) as long:
        (short_pid,) = short.execute("select pg_backend_pid()").fetchone() or (0,)
        (long_pid,) = long.execute("select pg_backend_pid()").fetchone() or (0,)
        wait_until_sync(lambda: short_pid not in activity.pids(db=None), timeout=3, what="the short-lived server")
        assert long_pid in activity.pids(db=None)
        assert short.execute("select pg_backend_pid()").fetchone() != (short_pid,)


def test_server_fast_close_ends_a_session_whose_server_must_reconnect(postgres: PostgresServer) -> None:
    config = make_config(postgres, pool_mode=PoolMode.SESSION, server_fast_close=True, admin_users=(APP_USER,))
    with running_pooler(config) as p, psycopg.connect(p.dsn(), autocommit=True) as session:
        session.execute("select 1")
        with psycopg.connect(p.dsn("pgbouncer"), autocommit=True) as console:
            console.execute(f"RECONNECT {APP_DB}")
        error = fatal_of(lambda: [session.execute("select 1") for _ in range(50) if not time.sleep(0.05)])
        assert error.diag.message_primary == "database configuration changed"
        with psycopg.connect(p.dsn(), autocommit=True) as fresh:
            assert fresh.execute("select 1").fetchone() == (1,)


def test_admin_set_accepts_every_pgbouncer_setting(postgres: PostgresServer) -> None:
    with running_pooler(make_config(postgres, admin_users=(APP_USER,))) as p, \
            psycopg.connect(p.dsn("pgbouncer"), autocommit=True, prepare_threshold=None) as console:
        notices: list[str | None] = []
        console.add_notice_handler(lambda d: notices.append(d.message_primary))
        console.execute("SET client_tls_ecdhcurve = 'auto'")  # failed the whole command before
        console.execute("SET pkt_buf = 8192")
        assert notices == [
            f"client_tls_ecdhcurve is ignored by pooler: {PGBOUNCER_IGNORED_SETTINGS['client_tls_ecdhcurve']}",
            f"pkt_buf is ignored by pooler: {PGBOUNCER_IGNORED_SETTINGS['pkt_buf']}",
        ]
        for setting, value in (("transaction_timeout", "7"), ("query_wait_notify", "2"),
                               ("max_db_client_connections", "9"), ("tcp_keepidle", "30"),
                               ("application_name_add_host", "1"), ("autodb_idle_timeout", "60"),
                               ("server_tls_sslmode", "disable")):
            console.execute(f"SET {setting} = {value}")
            rows = {row[0]: row[1] for row in console.execute("SHOW CONFIG").fetchall()}
            assert rows[setting] == value, setting
        assert len(notices) == 2  # the supported ones were applied without a word
        with pytest.raises(psycopg.Error, match="unknown setting"):
            console.execute("SET no_such_setting = 1")


# --- host lists, load_balance_hosts, auth_dbname -------------------------------------------------------------


def _two_hosts(postgres: PostgresServer) -> Any:
    """Two 'hosts' on one port: 127.0.0.1 and ::1, each a gate to the test Postgres."""
    stack = contextlib.ExitStack()
    v4 = stack.enter_context(gate_to(postgres.host, postgres.port))
    v6 = stack.enter_context(gate_to(postgres.host, postgres.port, bind="::1", listen_port=v4.port))
    return stack, v4, v6


def test_host_list_round_robin_spreads_new_server_connections(postgres: PostgresServer) -> None:
    stack, v4, v6 = _two_hosts(postgres)
    with stack:
        dbs = {APP_DB: DatabaseConfig(APP_DB, host="127.0.0.1,::1", port=v4.port)}
        with running_pooler(make_config(postgres, databases=dbs, default_pool_size=4)) as p:
            conns = [psycopg.connect(p.dsn()) for _ in range(4)]
            for conn in conns:
                conn.execute("select 1")  # four transactions at once: four servers
            assert (v4.accepted, v6.accepted) == (2, 2)
            for conn in conns:
                conn.close()


def test_host_list_disable_stays_on_a_host_until_it_fails_then_falls_back(postgres: PostgresServer) -> None:
    stack, v4, v6 = _two_hosts(postgres)
    with stack:
        v4.shut()  # the first host of the list refuses
        dbs = {APP_DB: DatabaseConfig(APP_DB, host="127.0.0.1,::1", port=v4.port, load_balance_hosts="disable")}
        config = make_config(postgres, databases=dbs, default_pool_size=3, server_login_retry=0.1)
        with running_pooler(config) as p:
            started = time.monotonic()
            conns = [psycopg.connect(p.dsn(), connect_timeout=10) for _ in range(3)]  # the first waits for the retry
            for conn in conns:
                conn.execute("select 1")
            assert time.monotonic() - started < 3
            assert (v4.accepted, v6.accepted) == (0, 3)  # after the failure: the next host, and it stays there
            for conn in conns:
                conn.close()


def test_cancel_reaches_the_host_the_server_is_on(postgres: PostgresServer) -> None:
    stack, v4, v6 = _two_hosts(postgres)
    with stack:
        dbs = {APP_DB: DatabaseConfig(APP_DB, host="::1,127.0.0.1", port=v4.port)}
        with running_pooler(make_config(postgres, databases=dbs)) as p, \
                psycopg.connect(p.dsn(), autocommit=True) as conn:
            conn.execute("select 1")  # its server is on ::1, the first of the list
            query = in_thread(lambda: conn.execute("select pg_sleep(5)"))
            time.sleep(0.3)
            conn.cancel_safe(timeout=5)  # the pooler must send it to ::1, not to "::1,127.0.0.1"
            with pytest.raises(psycopg.errors.QueryCanceled):
                query.result(5)
            assert (v4.accepted, v6.accepted) == (0, 2)  # the server, then the cancel: both to ::1


def test_auth_dbname_runs_auth_query_in_the_named_database(postgres: PostgresServer) -> None:
    only_in_otherdb = f"SELECT usename, passwd FROM pg_shadow WHERE usename=$1 AND current_database() = '{OTHER_DB}'"
    base: dict[str, Any] = {"userlist": (UserlistEntry(postgres.superuser, postgres.superuser_password),),
                            "auth_user": postgres.superuser, "auth_query": only_in_otherdb}
    with running_pooler(make_config(postgres, **base)) as p:  # auth_query runs in appdb: no row
        error = fatal_of(lambda: psycopg.connect(p.dsn()))
        assert "FATAL:  no such user" in str(error)
    with running_pooler(make_config(postgres, auth_dbname=OTHER_DB, **base)) as p, \
            psycopg.connect(p.dsn(), autocommit=True) as conn:
        assert conn.execute("select current_database(), current_user").fetchone() == (APP_DB, APP_USER)
    dbs = {APP_DB: DatabaseConfig(APP_DB, host=postgres.host, port=postgres.port, auth_dbname=OTHER_DB),
           OTHER_DB: DatabaseConfig(OTHER_DB, host=postgres.host, port=postgres.port)}
    with running_pooler(make_config(postgres, databases=dbs, **base)) as p, \
            psycopg.connect(p.dsn(), autocommit=True) as conn:  # per database
        assert conn.execute("select 1").fetchone() == (1,)


def test_unknown_database_is_told_only_after_authentication(postgres: PostgresServer) -> None:
    """PgBouncer authenticates against a fake database first: a stranger learns nothing about names."""
    dbs = {APP_DB: DatabaseConfig(APP_DB, host=postgres.host, port=postgres.port)}
    with running_pooler(make_config(postgres, databases=dbs)) as p:
        error = fatal_of(lambda: psycopg.connect(p.dsn("nope", password="wrong")))
        assert "FATAL:  SASL authentication failed" in str(error)  # not "no such database"
        error = fatal_of(lambda: psycopg.connect(p.dsn("nope")))
        assert "FATAL:  no such database: nope" in str(error)
