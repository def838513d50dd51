"""Every timeout of the periodic sweep, against a real pooler and a real Postgres.

Timeouts are small (0.3-1 s); the sweep tick adapts to the smallest one configured (a fifth of it), so
each test also bounds how late the timeout may fire. Where a timeout closes a backend, the test watches
that backend leave ``pg_stat_activity``; where it must not leave a backend dirty, the next client on
that same backend looks for the previous client's transaction.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from typing import Any

import psycopg
import pytest
from backends import (
    Activity,
    RawClient,
    error_fields,
    in_thread,
    pid_of,
    startup_packet,
    wait_until,
    wait_until_sync,
)
from harness import RunningPooler, make_config, running_pooler
from support import APP_DB, APP_PASSWORD, APP_USER, MD5_PASSWORD, MD5_USER, PostgresServer

from pooler.config import DatabaseConfig, PoolMode, UserConfig
from pooler.wire.auth import AuthType

pytestmark = pytest.mark.usefixtures("no_leftover_backends")

MD5 = {"user": MD5_USER, "password": MD5_PASSWORD}


def client_count(p: RunningPooler) -> int:
    return p.call(lambda pooler: len(pooler.clients))


# -- waiting for a server ------------------------------------------------------------------------------------


def test_query_wait_timeout_disconnects_the_queued_client_only(postgres: PostgresServer):
    users = {MD5_USER: UserConfig(MD5_USER, query_wait_timeout=0.0)}  # per-user override: never give up
    config = make_config(postgres, users=users, default_pool_size=1, query_wait_timeout=0.5)
    with running_pooler(config) as p:
        holder = psycopg.connect(p.dsn())
        holder.execute("SELECT 1")  # keeps the only server in its transaction
        md5_holder = psycopg.connect(p.dsn(**MD5))
        md5_holder.execute("SELECT 1")
        md5_waiter = psycopg.connect(p.dsn(**MD5), autocommit=True)
        md5_cur = md5_waiter.cursor()
        md5_result = in_thread(lambda: md5_cur.execute("SELECT 'served'").fetchone())

        waiter = psycopg.connect(p.dsn(), autocommit=True)
        started = time.monotonic()
        with pytest.raises(psycopg.OperationalError, match="query_wait_timeout") as info:
            waiter.execute("SELECT 1")
        waited = time.monotonic() - started
        assert info.value.sqlstate == "08P01"
        assert 0.45 <= waited < 2.5, waited

        assert holder.execute("SELECT 2").fetchone() == (2,)  # the client holding the server is unaffected
        holder.commit()
        with psycopg.connect(p.dsn(), autocommit=True) as later:
            assert later.execute("SELECT 3").fetchone() == (3,)
        assert not md5_result.done()  # query_wait_timeout = 0 for md5user: still queued
        md5_holder.commit()
        assert md5_result.result(5) == ("served",)
        for conn in (holder, md5_holder, md5_waiter, waiter):
            conn.close()


# -- queries and transactions ---------------------------------------------------------------------------------


def test_query_timeout_closes_the_backend_and_the_pool_recovers(postgres: PostgresServer, activity: Activity):
    with running_pooler(make_config(postgres, default_pool_size=2, query_timeout=0.5)) as p:
        slow = psycopg.connect(p.dsn(), autocommit=True)
        slow_pid = pid_of(slow)
        bystander = psycopg.connect(p.dsn(), autocommit=True)
        started = time.monotonic()
        with pytest.raises(psycopg.OperationalError, match="query timeout") as info:
            slow.execute("SELECT pg_sleep(10)")
        elapsed = time.monotonic() - started
        assert info.value.sqlstate == "08P01"
        assert info.value.diag.message_primary == "query timeout"  # PgBouncer's words (src/janitor.c)
        assert 0.45 <= elapsed < 2.5, elapsed
        # The backend is cancelled and closed, not handed to the next client mid-query.
        wait_until_sync(lambda: slow_pid not in activity.pids(), timeout=5, what="the timed-out backend to go")
        assert bystander.execute("SELECT pg_sleep(0.1), 'fine'").fetchone() == ("", "fine")
        with psycopg.connect(p.dsn(), autocommit=True) as fresh:
            assert pid_of(fresh) != slow_pid
        assert p.pool_stat()["servers"] >= 1
        bystander.close()
        slow.close()


def test_idle_transaction_timeout_rolls_back_and_the_backend_is_reused_clean(
    postgres: PostgresServer, activity: Activity, table: str
):
    with running_pooler(make_config(postgres, default_pool_size=1, idle_transaction_timeout=0.5)) as p:
        conn = psycopg.connect(p.dsn())
        pid = pid_of(conn)
        conn.execute(f"UPDATE {table} SET v = 1 WHERE id = 1")  # holds the row lock, then goes idle
        started = time.monotonic()
        wait_until_sync(lambda: client_count(p) == 0, timeout=5, what="the idle transaction to be cut")
        assert 0.45 <= time.monotonic() - started < 2.5
        with pytest.raises(psycopg.OperationalError, match="idle transaction timeout") as info:
            conn.execute("SELECT 1")
        assert info.value.sqlstate == "08P01"
        with psycopg.connect(p.dsn(), autocommit=True) as nxt:
            row = nxt.execute(
                f"SELECT pg_backend_pid(), txid_current_if_assigned(), (SELECT v FROM {table} WHERE id = 1)"
            ).fetchone()
            assert row == (pid, None, 0), "the backend came back dirty (same pid, open transaction or kept update)"
        # The row lock is gone too: another session (straight to Postgres) can take it at once.
        with psycopg.connect(postgres.dsn(APP_DB, APP_USER, APP_PASSWORD), autocommit=True) as other:
            other.execute("SET lock_timeout = '2s'")
            other.execute(f"UPDATE {table} SET v = 2 WHERE id = 1")
        conn.close()


@pytest.mark.parametrize("mode", [PoolMode.TRANSACTION, PoolMode.SESSION])
def test_idle_transaction_timeout_counts_idle_time_only(postgres: PostgresServer, mode: PoolMode):
    """A transaction that keeps working is not idle, however long it lasts; nor does the time its backend
    spent idle in the pool before count against it."""
    config = make_config(postgres, pool_mode=mode, default_pool_size=1, idle_transaction_timeout=0.4)
    with running_pooler(config) as p, psycopg.connect(p.dsn()) as conn:
        conn.execute("SELECT 1")
        conn.commit()
        time.sleep(0.55)  # the backend waits in the pool (or in the session) longer than the timeout
        started = time.monotonic()
        conn.execute("SELECT 'in a transaction'")
        while time.monotonic() - started < 0.9:  # over two timeouts of work, never 0.4 s idle
            time.sleep(0.1)
            conn.execute("SELECT 1")
        conn.commit()
        assert conn.execute("SELECT 'survived'").fetchone() == ("survived",)
        conn.commit()


def test_client_idle_timeout_closes_idle_clients_only(postgres: PostgresServer):
    with running_pooler(make_config(postgres, client_idle_timeout=0.5)) as p:
        idle = psycopg.connect(p.dsn(), autocommit=True)
        busy = psycopg.connect(p.dsn(), autocommit=True)
        idle.execute("SELECT 1")
        started = time.monotonic()
        while client_count(p) == 2 and time.monotonic() - started < 5:
            busy.execute("SELECT 1")  # never idle for long
            time.sleep(0.05)
        elapsed = time.monotonic() - started
        assert 0.45 <= elapsed < 2.5, elapsed
        with pytest.raises(psycopg.OperationalError, match="client_idle_timeout"):
            idle.execute("SELECT 1")
        assert busy.execute("SELECT 'still here'").fetchone() == ("still here",)
        busy.close()
        idle.close()


# -- logging in -----------------------------------------------------------------------------------------------


async def test_client_login_timeout(postgres: PostgresServer):
    config = make_config(postgres, client_login_timeout=0.5, auth_type=AuthType.SCRAM_SHA_256)
    with running_pooler(config) as p:
        logged_in = await psycopg.AsyncConnection.connect(p.dsn(), autocommit=True)

        async def silent() -> RawClient:
            return await RawClient.open(p.port)

        async def half_startup() -> RawClient:
            client = await RawClient.open(p.port)
            client.send(startup_packet({"user": APP_USER, "database": APP_DB})[:10])
            return client

        async def never_answers_the_password_request() -> RawClient:
            client = await RawClient.open(p.port)
            client.send(startup_packet({"user": APP_USER, "database": APP_DB}))
            assert (await client.read()).kind == b"R"  # SASL request, left unanswered
            return client

        loop = asyncio.get_running_loop()
        started = loop.time()
        clients = [await make() for make in (silent, half_startup, never_answers_the_password_request)]
        for client in clients:
            rest = await client.closed_by_peer(timeout=5)
            assert rest[:1] == b"E", rest
            fields = error_fields(rest[5 : 1 + struct.unpack("!i", rest[1:5])[0]])
            assert (fields["S"], fields["C"], fields["M"]) == ("FATAL", "08P01", "client_login_timeout")
        assert 0.45 <= loop.time() - started < 2.5
        cur = await logged_in.execute("SELECT 'unaffected'")  # logged in before: no login timeout applies
        assert await cur.fetchone() == ("unaffected",)
        await logged_in.close()


def test_server_connect_timeout_when_the_server_never_answers(postgres: PostgresServer):
    with socket.socket() as blackhole:  # accepts connections (the kernel does) and never says a word
        blackhole.bind(("127.0.0.1", 0))
        blackhole.listen(16)
        port = blackhole.getsockname()[1]
        dbs = {
            APP_DB: DatabaseConfig(APP_DB, host=postgres.host, port=postgres.port),
            "silent": DatabaseConfig("silent", host="127.0.0.1", port=port, dbname=APP_DB),
        }
        config = make_config(postgres, databases=dbs, server_connect_timeout=0.5, server_login_retry=5,
                             query_wait_timeout=1.5)
        with running_pooler(config) as p:
            started = time.monotonic()
            waiting = in_thread(lambda: psycopg.connect(p.dsn("silent"), connect_timeout=10))

            def failed_login() -> str | None:
                pool = p.call(lambda pl: pl.pools.get(("silent", APP_USER)))
                return pool.login_error["M"] if pool is not None and pool.login_error else None

            assert wait_until_sync(failed_login, timeout=3) == "connect timeout"  # PgBouncer's words
            assert 0.45 <= time.monotonic() - started < 1.5  # the login was cut at server_connect_timeout
            with pytest.raises(psycopg.OperationalError, match="server_connect_timeout") as info:
                psycopg.connect(p.dsn("silent"), connect_timeout=10)  # arrives after the failure: at once
            assert "FATAL:  server login has been failing, cached error: connect timeout (server_login_retry)" in str(
                info.value)
            with pytest.raises(psycopg.OperationalError, match="query_wait_timeout"):
                waiting.result(5)  # the client queued before the failure stayed queued until query_wait_timeout
            with psycopg.connect(p.dsn(APP_DB), autocommit=True) as conn:  # other databases are unaffected
                assert conn.execute("SELECT 1").fetchone() == (1,)
            assert p.pool_stat("silent", APP_USER)["servers"] == 0


def test_server_login_retry_caches_the_login_error(postgres: PostgresServer):
    good = DatabaseConfig(APP_DB, host=postgres.host, port=postgres.port)
    bad = DatabaseConfig(APP_DB, host=postgres.host, port=postgres.port, password="not-the-password")
    retry = 1.0
    config = make_config(postgres, databases={APP_DB: bad}, server_login_retry=retry)
    with running_pooler(config) as p:
        with pytest.raises(psycopg.OperationalError, match='password authentication failed for user "app"') as first:
            psycopg.connect(p.dsn())
        failed_at = time.monotonic()
        assert first.value.sqlstate in (None, "28P01")
        with pytest.raises(psycopg.OperationalError) as cached:
            psycopg.connect(p.dsn())
        assert time.monotonic() - failed_at < retry
        assert (
            'FATAL:  server login has been failing, cached error: password authentication failed for user "app"'
            " (server_login_retry)"
        ) in str(cached.value)

        p.reload(make_config(postgres, databases={APP_DB: good}, server_login_retry=retry))
        time.sleep(max(0.0, failed_at + retry - time.monotonic()) + 0.05)  # the window is time itself
        with psycopg.connect(p.dsn(), autocommit=True) as conn:
            assert conn.execute("SELECT current_user").fetchone() == (APP_USER,)


def test_server_login_error_reaches_the_client_with_its_sqlstate(postgres: PostgresServer):
    bad = DatabaseConfig(APP_DB, host=postgres.host, port=postgres.port, password="not-the-password")
    config = make_config(postgres, databases={APP_DB: bad}, auth_type=AuthType.TRUST)

    async def login() -> dict[str, str]:
        client = await RawClient.open(p.port)
        client.send(startup_packet({"user": APP_USER, "database": APP_DB}))
        messages = await client.until_ready()
        await client.close()
        return messages[-1].error

    with running_pooler(config) as p:
        first = asyncio.run(login())
        assert (first["S"], first["C"]) == ("FATAL", "28P01")
        cached = asyncio.run(login())
        assert cached["C"] == "28P01"
        assert cached["M"].endswith("(server_login_retry)")


# -- servers in the pool --------------------------------------------------------------------------------------


async def test_server_idle_timeout_closes_idle_backends(postgres: PostgresServer, aactivity: Activity):
    with running_pooler(make_config(postgres, default_pool_size=5, server_idle_timeout=0.3)) as p:
        conns = [await psycopg.AsyncConnection.connect(p.dsn()) for _ in range(3)]
        for conn in conns:
            await conn.execute("SELECT 1")  # three transactions at once: three backends
        assert await aactivity.acount() == 3
        for conn in conns:
            await conn.commit()
        loop = asyncio.get_running_loop()
        released = loop.time()
        await wait_until(lambda: _none_left(aactivity), timeout=5, what="idle backends to be closed")
        assert loop.time() - released >= 0.25
        assert p.pool_stat()["servers"] == 0
        cur = await conns[0].execute("SELECT 'reopened'")  # clients stay; a fresh backend serves them
        assert await cur.fetchone() == ("reopened",)
        for conn in conns:
            await conn.close()


async def _none_left(activity: Activity) -> bool:
    return await activity.acount() == 0


def test_server_lifetime_closes_old_backends(postgres: PostgresServer, activity: Activity):
    lifetime = 0.5
    with running_pooler(make_config(postgres, default_pool_size=1, server_lifetime=lifetime)) as p:
        conn = psycopg.connect(p.dsn())
        first = pid_of(conn)
        conn.execute(f"SELECT pg_sleep({lifetime + 0.2})")  # the backend ages past its lifetime while in use
        assert first in activity.pids()  # in use: not closed under the client
        conn.commit()  # released: too old to go back to the pool
        wait_until_sync(lambda: first not in activity.pids(), timeout=3, what="the old backend to be closed")
        conn.autocommit = True
        second = pid_of(conn)
        assert second != first
        # Idle in the pool, it is closed by the sweep once it is too old.
        wait_until_sync(lambda: second not in activity.pids(), timeout=3, what="the idle old backend to go")
        assert pid_of(conn) not in (first, second)
        conn.close()


#: A health check with a trace: it counts itself in a session variable of the backend it runs on.
COUNTING_CHECK = ("select set_config('pooler.checks', (coalesce(nullif(current_setting('pooler.checks', true), ''),"
                  " '0')::int + 1)::text, false)")


def checks_seen(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("select coalesce(nullif(current_setting('pooler.checks', true), ''), '0')").fetchone()
    return int(row[0]) if row else -1


def test_server_check_query_runs_before_reusing_a_server_idle_past_the_delay(postgres: PostgresServer):
    """PgBouncer's server_check_delay: a released server idle longer than it is checked before its reuse."""
    config = make_config(postgres, default_pool_size=1, server_check_delay=0.3, server_check_query=COUNTING_CHECK)
    with running_pooler(config) as p, psycopg.connect(p.dsn(), autocommit=True) as conn:
        assert checks_seen(conn) == 0  # a fresh server is not checked
        assert checks_seen(conn) == 0  # nor one reused within the delay
        time.sleep(0.45)
        assert checks_seen(conn) == 1  # idle past the delay: checked, then handed over
        assert checks_seen(conn) == 1


def test_server_check_delay_zero_checks_before_every_reuse(postgres: PostgresServer):
    config = make_config(postgres, default_pool_size=1, server_check_delay=0, server_check_query=COUNTING_CHECK)
    with running_pooler(config) as p, psycopg.connect(p.dsn(), autocommit=True) as conn:
        assert [checks_seen(conn) for _ in range(3)] == [1, 2, 3]


def test_no_health_check_within_the_delay(postgres: PostgresServer, activity: Activity):
    check = "select 1 /* pooler health check */"
    config = make_config(postgres, server_check_delay=30, server_check_query=check, server_idle_timeout=3)
    with running_pooler(config) as p, psycopg.connect(p.dsn(), autocommit=True) as conn:
        pid = pid_of(conn)
        time.sleep(1.5)  # a few sweeps (the tick follows server_idle_timeout), well before that timeout
        assert [r["query"] for r in activity.rows() if r["pid"] == pid] == ["SELECT pg_backend_pid()"]
