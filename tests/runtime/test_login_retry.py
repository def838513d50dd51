"""Failed server logins (issue 10, item 4): queued clients ride out a Postgres restart, newcomers fail fast.

PgBouncer's contract (src/objects.c, src/server.c, doc/config.md server_login_retry): when the pool
cannot reach Postgres, the clients already queued stay queued while the pool retries every
``server_login_retry``, up to ``query_wait_timeout``; only a client that arrives while the last login
failed and no server is up gets the cached error at once. A login Postgres itself refuses (a wrong
password) fails the queue when no server is up, since no retry would help.
"""

from __future__ import annotations

import time

import psycopg
import pytest
from backends import Activity, in_thread, wait_until_sync
from gate import gate_to
from harness import make_config, running_pooler
from support import APP_DB, PostgresServer

from pooler.config import DatabaseConfig

pytestmark = pytest.mark.usefixtures("no_leftover_backends")

CACHED_CONNECT_FAILED = "server login has been failing, cached error: connect failed (server_login_retry)"


def test_a_postgres_restart_shorter_than_query_wait_timeout_is_invisible_to_a_queued_client(
    postgres: PostgresServer,
) -> None:
    with gate_to(postgres.host, postgres.port) as gate:
        dbs = {APP_DB: DatabaseConfig(APP_DB, host="127.0.0.1", port=gate.port)}
        config = make_config(postgres, databases=dbs, default_pool_size=1, server_login_retry=0.3,
                             query_wait_timeout=10)
        with running_pooler(config) as p, psycopg.connect(p.dsn(), autocommit=True) as conn:
            assert conn.execute("select 1").fetchone() == (1,)
            gate.shut()  # Postgres "goes down": the idle backend's connection drops, new ones are refused
            wait_until_sync(lambda: p.pool_stat()["servers"] == 0, what="the dropped backend to be forgotten")
            started = time.monotonic()
            query = in_thread(lambda: conn.execute("select 42").fetchone())
            wait_until_sync(lambda: p.call(lambda pl: pl.pools[(APP_DB, "app")].login_error is not None),
                            what="a failed login while the client is queued")
            time.sleep(0.8)  # several retries fail while the client stays queued
            assert not query.done()
            gate.open()  # Postgres is back
            assert query.result(10) == (42,)
            assert 0.8 <= time.monotonic() - started < 5


def test_a_client_arriving_while_logins_fail_gets_the_cached_error_at_once(postgres: PostgresServer) -> None:
    with gate_to(postgres.host, postgres.port) as gate:
        dbs = {APP_DB: DatabaseConfig(APP_DB, host="127.0.0.1", port=gate.port)}
        config = make_config(postgres, databases=dbs, server_login_retry=5, query_wait_timeout=10)
        with running_pooler(config) as p:
            with psycopg.connect(p.dsn(), autocommit=True) as conn:  # the pool has logged in once
                conn.execute("select 1")
            gate.shut()
            wait_until_sync(lambda: p.pool_stat()["servers"] == 0, what="the dropped backend to be forgotten")
            with psycopg.connect(p.dsn(), autocommit=True) as first:
                queued = in_thread(lambda: first.execute("select 1").fetchone())
                wait_until_sync(lambda: p.call(lambda pl: pl.pools[(APP_DB, "app")].login_error is not None),
                                what="a failed login")
                started = time.monotonic()
                with pytest.raises(psycopg.OperationalError) as info, psycopg.connect(p.dsn()) as late:
                    late.execute("select 1")
                assert time.monotonic() - started < 1  # at once, not after query_wait_timeout
                assert info.value.diag.message_primary == CACHED_CONNECT_FAILED
                assert info.value.diag.message_detail is not None
                assert f"127.0.0.1:{gate.port}" in info.value.diag.message_detail
                assert not queued.done()  # the client queued before the failure is still waiting
                gate.open()
                assert queued.result(10) == (1,)  # the retry after server_login_retry serves it


def test_a_queued_client_is_served_when_the_last_server_closes_after_a_failed_login(
    postgres: PostgresServer, activity: Activity
) -> None:
    """The stranded waiter: one login failed while a server lived; that server then closed. Nothing but a
    retry after server_login_retry can serve the queue now (no release, no new request will come)."""
    with gate_to(postgres.host, postgres.port) as gate:
        dbs = {APP_DB: DatabaseConfig(APP_DB, host="127.0.0.1", port=gate.port)}
        config = make_config(postgres, databases=dbs, default_pool_size=2, server_login_retry=0.5,
                             query_wait_timeout=8)
        with running_pooler(config) as p, psycopg.connect(p.dsn(), autocommit=True) as waiter:
            holder = psycopg.connect(p.dsn())
            (pid,) = holder.execute("select pg_backend_pid()").fetchone() or (0,)  # holds server 1 in a transaction
            gate.shut(drop=False)  # new logins are refused; server 1 lives
            started = time.monotonic()
            queued = in_thread(lambda: waiter.execute("select 7").fetchone())
            wait_until_sync(lambda: p.call(lambda pl: pl.pools[(APP_DB, "app")].login_error is not None),
                            what="the refused login for the queued client")
            gate.open()
            activity.execute("select pg_terminate_backend(%s)", [pid])  # server 1 closes: nothing is left
            assert queued.result(6) == (7,)
            assert time.monotonic() - started < 3
            holder.close()


def test_clients_waiting_for_a_pool_that_never_reached_postgres_time_out_with_the_reason(
    postgres: PostgresServer,
) -> None:
    with gate_to(postgres.host, postgres.port) as gate:
        gate.shut()
        dbs = {APP_DB: DatabaseConfig(APP_DB, host="127.0.0.1", port=gate.port)}
        config = make_config(postgres, databases=dbs, server_login_retry=0.2, query_wait_timeout=1)
        with running_pooler(config) as p:
            started = time.monotonic()
            with pytest.raises(psycopg.OperationalError) as info:
                psycopg.connect(p.dsn(), connect_timeout=10)
            assert 0.9 <= time.monotonic() - started < 3  # queued for query_wait_timeout, retried meanwhile
            assert "query_wait_timeout" in str(info.value)
            assert "the last server login failed: connect failed: could not connect to server" in str(info.value)
            assert gate.accepted == 0
