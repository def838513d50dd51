"""The direct endpoint (``direct_port``): one dedicated backend per client session, like Neon's unpooled
endpoint, next to the pooled one. Real pooler, real Postgres; backends are counted in ``pg_stat_activity``.
"""

from __future__ import annotations

import asyncio
import time

import asyncpg
import psycopg
import pytest
from backends import Activity, PeakSampler, pid_of, wait_until, wait_until_sync
from harness import RunningPooler, make_config, running_pooler
from support import APP_DB, APP_USER, MD5_PASSWORD, MD5_USER, OTHER_DB, PostgresServer

pytestmark = pytest.mark.usefixtures("no_leftover_backends")

MD5 = {"user": MD5_USER, "password": MD5_PASSWORD}


def direct(p: RunningPooler, dbname: str = APP_DB, *, autocommit: bool = False, **kw: str) -> psycopg.Connection:
    return psycopg.connect(p.dsn(dbname, direct=True, **kw), autocommit=autocommit, connect_timeout=10)


def test_a_direct_session_keeps_its_own_backend(postgres: PostgresServer, activity: Activity):
    with running_pooler(make_config(postgres, default_pool_size=1)) as p:
        a = direct(p)
        b = direct(p)  # pool size 1 does not apply: a second session, a second backend
        pid = pid_of(a)
        assert pid_of(b) != pid
        a.execute("SET work_mem = '7MB'")
        a.execute("CREATE TEMP TABLE mine (x int)")
        a.execute("PREPARE two AS SELECT 2")
        a.commit()
        for i in range(3):  # transaction after transaction: same backend, session state intact
            a.execute("INSERT INTO mine VALUES (%s)", [i])
            row = a.execute("SELECT pg_backend_pid(), current_setting('work_mem'), (SELECT count(*) FROM mine)")
            assert row.fetchone() == (pid, "7MB", i + 1)
            a.commit()
        assert a.execute("EXECUTE two").fetchone() == (2,)
        a.commit()
        a.autocommit = True
        a.execute("LISTEN pooler_direct")
        with psycopg.connect(postgres.dsn(APP_DB), autocommit=True) as notifier:  # straight to Postgres
            notifier.execute("NOTIFY pooler_direct, 'hello'")
        notes = list(a.notifies(timeout=5, stop_after=1))
        assert [(n.channel, n.payload) for n in notes] == [("pooler_direct", "hello")]
        assert p.pool_stat()["servers"] == 0  # direct backends are nobody's pool servers
        assert {pid, pid_of(b)} <= activity.pids()
        a.close()  # the session ends: so does its backend
        wait_until_sync(lambda: pid not in activity.pids(), what="the direct backend to close with its client")
        b.close()


def test_a_direct_client_leaving_mid_transaction_takes_its_transaction_along(
    postgres: PostgresServer, activity: Activity
):
    with running_pooler(make_config(postgres)) as p:
        a = direct(p)
        pid = pid_of(a)
        a.execute("CREATE TEMP TABLE gone_with_me (x int)")
        a.pgconn.finish()  # drops the connection without committing
        wait_until_sync(lambda: pid not in activity.pids(), what="the direct backend to close")


def test_direct_backends_count_against_max_db_connections(postgres: PostgresServer, activity: Activity):
    with running_pooler(make_config(postgres, max_db_connections=2)) as p:
        first = direct(p, autocommit=True)
        second = direct(p, **MD5, autocommit=True)  # another user, same database: same cap
        with pytest.raises(psycopg.OperationalError, match="max_db_connections") as info:
            direct(p)
        assert "too many connections" in str(info.value)
        assert len(activity.pids(APP_DB, None)) == 2
        with direct(p, OTHER_DB, autocommit=True) as elsewhere:  # another database is not capped
            assert elsewhere.execute("SELECT current_database()").fetchone() == (OTHER_DB,)
        second.close()
        wait_until_sync(lambda: len(activity.pids(APP_DB, None)) == 1, what="md5user's backend to close")
        with direct(p, autocommit=True) as third:
            assert third.execute("SELECT 1").fetchone() == (1,)
        first.close()


def test_direct_backends_count_against_max_user_connections(postgres: PostgresServer, activity: Activity):
    with running_pooler(make_config(postgres, max_user_connections=2)) as p:
        first = direct(p, APP_DB, autocommit=True)
        second = direct(p, OTHER_DB, autocommit=True)  # another database, same user: same cap
        with pytest.raises(psycopg.OperationalError, match="max_user_connections"):
            direct(p, APP_DB)
        with direct(p, **MD5, autocommit=True) as other_user:
            assert other_user.execute("SELECT current_user").fetchone() == (MD5_USER,)
        assert len(activity.pids(None, APP_USER)) == 2
        first.close()
        second.close()


async def test_pooled_clients_wait_for_room_that_direct_sessions_give_back(
    postgres: PostgresServer, aactivity: Activity
):
    """Direct and pooled backends share max_db_connections: a pooled client waits while direct sessions
    hold the whole cap, and gets a server as soon as one of them ends."""
    with running_pooler(make_config(postgres, max_db_connections=2)) as p:
        sessions = [await psycopg.AsyncConnection.connect(p.dsn(direct=True), autocommit=True) for _ in range(2)]
        pooled = asyncio.create_task(psycopg.AsyncConnection.connect(p.dsn(), autocommit=True))
        await asyncio.sleep(0.2)  # room would have been made by now if the cap were not shared
        assert not pooled.done()
        assert await aactivity.acount(APP_DB, None) == 2
        await sessions[0].close()
        conn = await asyncio.wait_for(pooled, 5)
        cur = await conn.execute("SELECT 'pooled'")
        assert await cur.fetchone() == ("pooled",)
        assert await aactivity.acount(APP_DB, None) == 2
        await conn.close()
        await sessions[1].close()


async def test_direct_endpoint_refuses_a_wrong_password(postgres: PostgresServer, aactivity: Activity):
    with running_pooler(make_config(postgres)) as p:
        with pytest.raises(psycopg.OperationalError, match="FATAL:  SASL authentication failed"):
            await psycopg.AsyncConnection.connect(p.dsn(password="wrong", direct=True), connect_timeout=10)
        with pytest.raises(asyncpg.InvalidPasswordError) as info:
            await asyncpg.connect(p.dsn(password="wrong", direct=True), statement_cache_size=0, timeout=10)
        assert info.value.sqlstate == "28P01"
        assert await aactivity.apids() == set()  # no backend was opened for it


async def test_pooled_endpoint_is_unaffected_by_direct_sessions(postgres: PostgresServer, aactivity: Activity):
    with running_pooler(make_config(postgres, default_pool_size=1)) as p:
        sessions = [await psycopg.AsyncConnection.connect(p.dsn(direct=True)) for _ in range(3)]
        direct_pids = set()
        for s in sessions:  # each holds a transaction open on its own backend
            cur = await s.execute("SELECT pg_backend_pid()")
            direct_pids.add((await cur.fetchone() or (0,))[0])
        assert len(direct_pids) == 3

        async def pooled_client() -> set[int]:
            async with await psycopg.AsyncConnection.connect(p.dsn()) as conn:
                pids = set()
                for _ in range(3):
                    cur = await conn.execute("SELECT pg_backend_pid(), pg_sleep(0.01)")
                    pids.add((await cur.fetchone() or (0,))[0])
                    await conn.commit()
                return pids

        async with PeakSampler(aactivity) as sampler:
            started = time.monotonic()
            results = await asyncio.wait_for(asyncio.gather(*(pooled_client() for _ in range(4))), 10)
        pooled_pids = set().union(*results)
        assert len(pooled_pids) == 1  # pool size 1, whatever the direct sessions hold
        assert not pooled_pids & direct_pids
        assert sampler.peak == 4  # three direct backends and the one pooled backend
        assert time.monotonic() - started < 5
        assert p.pool_stat()["servers"] == 1
        await wait_until(lambda: p.pool_stat()["idle"] == 1, what="the pooled server to be idle")
        for s in sessions:
            await s.close()
