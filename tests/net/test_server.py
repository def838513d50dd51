"""Backend lifecycle: what happens to a backend when its client or the backend itself goes away, and
cancel requests. Real pooler, real Postgres; "clean" is checked on the backend itself (same pid, no
transaction, no lock, no half-done COPY), "closed" by watching its pid leave ``pg_stat_activity``.
"""

from __future__ import annotations

import asyncio
import secrets
import time

import asyncpg
import psycopg
import pytest
from backends import (
    Activity,
    RawClient,
    cancel_packet,
    errors_of,
    message,
    query_message,
    rows_of,
    wait_until,
)
from harness import RunningPooler, free_port, make_config, running_pooler
from support import APP_DB, APP_PASSWORD, APP_USER, PostgresServer

from pooler.config import DatabaseConfig
from pooler.wire.auth import AuthType

pytestmark = pytest.mark.usefixtures("no_leftover_backends")


async def apg(p: RunningPooler) -> asyncpg.Connection:
    return await asyncpg.connect(p.dsn(), statement_cache_size=0, timeout=10)


def client_count(p: RunningPooler) -> int:
    return p.call(lambda pooler: len(pooler.clients))


async def running(activity: Activity, pid: int, text: str) -> bool:
    return any(r["pid"] == pid and r["state"] == "active" and text in r["query"] for r in await activity.arows())


async def gone(activity: Activity, pid: int) -> bool:
    return pid not in await activity.apids()


# -- a client goes away ----------------------------------------------------------------------------------------


async def test_client_vanishing_mid_transaction_leaves_a_clean_backend(
    postgres: PostgresServer, activity: Activity, table: str
):
    with running_pooler(make_config(postgres, default_pool_size=1)) as p:
        a = await apg(p)
        tx = a.transaction()
        await tx.start()
        pid = await a.fetchval("SELECT pg_backend_pid()")
        await a.execute(f"UPDATE {table} SET v = 1 WHERE id = 1")
        a.terminate()  # the socket is dropped: no ROLLBACK, no Terminate
        await wait_until(lambda: client_count(p) == 0, what="the pooler to see the client go")
        # The row lock is released: another session (straight to Postgres) takes it without waiting long.
        other = await asyncpg.connect(postgres.dsn(APP_DB, APP_USER, APP_PASSWORD), statement_cache_size=0)
        await other.execute("SET lock_timeout = '2s'")
        assert await other.fetchval(f"SELECT v FROM {table} WHERE id = 1 FOR UPDATE") == 0
        await other.close()
        b = await apg(p)
        row = await asyncio.wait_for(
            b.fetchrow(f"SELECT pg_backend_pid(), txid_current_if_assigned(), (SELECT v FROM {table})"), 5
        )
        assert tuple(row) == (pid, None, 0), "the backend was reused with the vanished client's transaction"
        await b.close()


async def test_client_vanishing_mid_copy_never_hands_over_a_copying_backend(
    postgres: PostgresServer, activity: Activity, table: str
):
    config = make_config(postgres, default_pool_size=1, auth_type=AuthType.TRUST)
    with running_pooler(config) as p:
        raw = await RawClient.login(p.port)
        pid = int(rows_of(await raw.query("SELECT pg_backend_pid()"))[0][0] or 0)
        raw.send(query_message(f"COPY {table} FROM STDIN"))
        assert (await raw.read()).kind == b"G"  # CopyInResponse: the backend is in COPY now
        raw.send(message(b"d", b"2\t2\n") + message(b"d", b"3\t3\n") + message(b"d", b"4\t"))  # half a row
        await wait_until(lambda: running(activity, pid, "COPY"), what="the COPY to be under way")
        raw.abort()
        await wait_until(lambda: client_count(p) == 0, what="the pooler to see the client go")
        nxt = await RawClient.login(p.port)
        answer = await nxt.query(f"SELECT pg_backend_pid(), txid_current_if_assigned(), (SELECT count(*) FROM {table})")
        assert not errors_of(answer)
        ((new_pid, xid, count),) = rows_of(answer)
        assert (xid, count) == (None, "1"), "the COPY's rows were kept, or its transaction is still open"
        if new_pid == str(pid):  # reused: only acceptable if it left COPY mode cleanly (checked above)
            assert answer[-1].payload == b"I"
        else:  # or closed, as this pooler does: the old backend leaves Postgres
            await wait_until(lambda: gone(activity, pid), what="the copying backend to be closed")
        assert rows_of(await nxt.query("SELECT 'still serving'")) == [["still serving"]]
        await nxt.close()


async def test_client_vanishing_during_a_long_query_cancels_it(postgres: PostgresServer, activity: Activity):
    with running_pooler(make_config(postgres, default_pool_size=1)) as p:
        a = await apg(p)
        pid = await a.fetchval("SELECT pg_backend_pid()")
        sleeper = asyncio.create_task(a.execute("SELECT pg_sleep(60)"))
        await wait_until(lambda: running(activity, pid, "pg_sleep"), what="the query to run")
        loop = asyncio.get_running_loop()
        left = loop.time()
        a.terminate()
        await wait_until(lambda: gone(activity, pid), timeout=5, what="the orphaned query's backend to go")
        assert loop.time() - left < 3  # cancelled: pg_sleep(60) would keep it for a minute
        with pytest.raises((asyncpg.InterfaceError, asyncpg.ConnectionDoesNotExistError, asyncio.CancelledError)):
            await sleeper
        b = await apg(p)
        assert await asyncio.wait_for(b.fetchval("SELECT pg_backend_pid()"), 5) != pid  # not reused
        await b.close()


# -- a backend goes away ---------------------------------------------------------------------------------------


async def test_backend_terminated_mid_query(postgres: PostgresServer, activity: Activity):
    with running_pooler(make_config(postgres, default_pool_size=2)) as p:
        victim = await psycopg.AsyncConnection.connect(p.dsn(), autocommit=True)
        other = await psycopg.AsyncConnection.connect(p.dsn())
        cur = await other.execute("SELECT pg_backend_pid()")  # other holds its own backend in a transaction
        (other_pid,) = await cur.fetchone() or (0,)
        cur = await victim.execute("SELECT pg_backend_pid()")
        (pid,) = await cur.fetchone() or (0,)
        query = asyncio.create_task(victim.execute("SELECT pg_sleep(60)"))
        await wait_until(lambda: running(activity, pid, "pg_sleep"), what="the query to run")
        await activity.aexecute("SELECT pg_terminate_backend(%s)", [pid])
        with pytest.raises(psycopg.OperationalError) as info:
            await asyncio.wait_for(query, 5)  # an error, not a hang
        text = str(info.value)
        assert "terminating connection due to administrator command" in text or "server conn crashed?" in text, text
        cur = await other.execute("SELECT pg_backend_pid()")
        assert await cur.fetchone() == (other_pid,)  # the other client's transaction goes on
        await other.commit()
        await wait_until(lambda: p.pool_stat()["servers"] == 1, what="the pool to drop the dead backend")
        async with await psycopg.AsyncConnection.connect(p.dsn(), autocommit=True) as fresh:
            cur = await fresh.execute("SELECT pg_backend_pid()")
            assert (await cur.fetchone() or (0,))[0] != pid
        await victim.close()
        await other.close()


async def test_backend_terminated_while_idle_in_the_pool(postgres: PostgresServer, activity: Activity):
    with running_pooler(make_config(postgres, default_pool_size=1)) as p:
        conn = await apg(p)
        pid = await conn.fetchval("SELECT pg_backend_pid()")
        assert p.pool_stat() == {"servers": 1, "idle": 1, "waiting": 0, "active": 0}
        await activity.aexecute("SELECT pg_terminate_backend(%s)", [pid])
        await wait_until(lambda: p.pool_stat()["servers"] == 0, what="the pooler to notice the FATAL / EOF")
        new_pid = await asyncio.wait_for(conn.fetchval("SELECT pg_backend_pid()"), 5)  # same client, fresh backend
        assert new_pid != pid
        await conn.close()


async def test_backend_terminated_while_its_client_sits_in_a_transaction(postgres: PostgresServer, activity: Activity):
    with running_pooler(make_config(postgres, default_pool_size=1)) as p:
        conn = await psycopg.AsyncConnection.connect(p.dsn())
        cur = await conn.execute("SELECT pg_backend_pid()")  # the transaction keeps this backend linked
        (pid,) = await cur.fetchone() or (0,)
        await activity.aexecute("SELECT pg_terminate_backend(%s)", [pid])
        await wait_until(lambda: client_count(p) == 0, what="the linked client to be closed with its backend")
        with pytest.raises(psycopg.OperationalError):
            await conn.execute("SELECT 1")  # the transaction is gone: the client must not carry on in it
        async with await psycopg.AsyncConnection.connect(p.dsn(), autocommit=True) as fresh:
            cur = await fresh.execute("SELECT pg_backend_pid()")
            assert (await cur.fetchone() or (0,))[0] != pid
        await conn.close()


def test_unreachable_postgres_fails_the_login_with_the_reason(postgres: PostgresServer):
    """The first client waits for the retries (query_wait_timeout); the next one, arriving within
    server_login_retry of a failure, gets PgBouncer's cached error at once; both carry the reason."""
    port = free_port()  # nothing listens there
    dbs = {"nowhere": DatabaseConfig("nowhere", host="127.0.0.1", port=port, dbname=APP_DB)}
    with running_pooler(make_config(postgres, databases=dbs, query_wait_timeout=0.5, server_login_retry=5)) as p:
        started = time.monotonic()
        with pytest.raises(psycopg.OperationalError, match=rf"could not connect to server 127.0.0.1:{port}") as first:
            psycopg.connect(p.dsn("nowhere"), connect_timeout=10)
        assert "FATAL:  query_wait_timeout" in str(first.value)
        assert time.monotonic() - started < 2.5
        started = time.monotonic()
        with pytest.raises(psycopg.OperationalError, match=rf"could not connect to server 127.0.0.1:{port}") as next_:
            psycopg.connect(p.dsn("nowhere"), connect_timeout=10)
        assert "FATAL:  server login has been failing, cached error: connect failed (server_login_retry)" in str(
            next_.value)
        assert time.monotonic() - started < 0.5  # refused at once, not after a timeout


# -- cancel ----------------------------------------------------------------------------------------------------


async def test_psycopg_cancel_stops_the_query(postgres: PostgresServer, activity: Activity):
    with running_pooler(make_config(postgres)) as p:
        conn = await psycopg.AsyncConnection.connect(p.dsn(), autocommit=True)
        cur = await conn.execute("SELECT pg_backend_pid()")
        (pid,) = await cur.fetchone() or (0,)
        query = asyncio.create_task(conn.execute("SELECT pg_sleep(10)"))
        await wait_until(lambda: running(activity, pid, "pg_sleep"), what="the query to run")
        loop = asyncio.get_running_loop()
        started = loop.time()
        await conn.cancel_safe(timeout=5)
        with pytest.raises(psycopg.errors.QueryCanceled) as info:
            await asyncio.wait_for(query, 5)
        assert info.value.sqlstate == "57014"
        assert loop.time() - started < 3
        cur = await conn.execute("SELECT 'usable'")
        assert await cur.fetchone() == ("usable",)
        await conn.close()


async def test_asyncpg_timeout_cancels_the_query(postgres: PostgresServer, activity: Activity):
    with running_pooler(make_config(postgres, default_pool_size=1)) as p:
        conn = await apg(p)
        pid = await conn.fetchval("SELECT pg_backend_pid()")
        with pytest.raises(asyncio.TimeoutError):
            await conn.fetchval("SELECT pg_sleep(10)", timeout=0.5)
        assert await asyncio.wait_for(conn.fetchval("SELECT 'usable'"), 5) == "usable"
        assert not await running(activity, pid, "pg_sleep")
        await conn.close()


async def test_cancel_with_a_wrong_or_foreign_key_cancels_nothing(postgres: PostgresServer, activity: Activity):
    """An idle client's key, and a made-up one, must not cancel the query another client runs now, even on
    the very backend the idle client used a moment ago (pool size 1)."""
    config = make_config(postgres, default_pool_size=1, auth_type=AuthType.TRUST)
    with running_pooler(config) as p:
        idle = await RawClient.login(p.port)
        ((idle_pid,),) = rows_of(await idle.query("SELECT pg_backend_pid()"))
        assert idle.key is not None
        busy = await RawClient.login(p.port)
        busy.send(query_message("SELECT pg_backend_pid(), pg_sleep(1), 'completed'"))
        await wait_until(lambda: running(activity, int(idle_pid or 0), "pg_sleep"), what="the busy query to run")
        for key in (idle.key, (secrets.randbits(31), secrets.randbits(31))):
            canceller = await RawClient.open(p.port)
            canceller.send(cancel_packet(*key))
            assert await canceller.closed_by_peer() == b""
        answer = await busy.until_ready(timeout=10)
        assert not errors_of(answer), errors_of(answer)
        assert rows_of(answer) == [[idle_pid, "", "completed"]]
        assert busy.key != idle.key
        await idle.close()
        await busy.close()


async def test_cancel_with_the_clients_own_key_over_the_wire(postgres: PostgresServer, activity: Activity):
    config = make_config(postgres, default_pool_size=1, auth_type=AuthType.TRUST)
    with running_pooler(config) as p:
        busy = await RawClient.login(p.port)
        ((pid,),) = rows_of(await busy.query("SELECT pg_backend_pid()"))
        assert busy.key is not None and busy.key[0] != int(pid or 0)  # the pooler's key, not the backend's
        busy.send(query_message("SELECT pg_sleep(10)"))
        await wait_until(lambda: running(activity, int(pid or 0), "pg_sleep"), what="the query to run")
        canceller = await RawClient.open(p.port)
        canceller.send(cancel_packet(*busy.key))
        answer = await busy.until_ready(timeout=5)
        assert [e["C"] for e in errors_of(answer)] == ["57014"]
        assert answer[-1].payload == b"I"
        await busy.close()
