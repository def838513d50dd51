"""PgBouncer's documented behaviour where pooler used to differ (issue 10, item 8), with its exact texts.

The texts are PgBouncer's (src/janitor.c, src/client.c, include/pktbuf.h); every test runs real
clients against the real Postgres.
"""

from __future__ import annotations

import socket
import time
from typing import Any

import psycopg
import pytest
from backends import in_thread, wait_until_sync
from harness import RunningPooler, make_config, running_pooler
from support import APP_DB, APP_PASSWORD, APP_USER, MD5_PASSWORD, MD5_USER, OTHER_DB, PostgresServer

from pooler.config import DatabaseConfig, UserConfig

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
