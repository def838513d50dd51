"""Pools and limits, against a real pooler and a real Postgres.

Every limit is checked where it matters: the backends Postgres itself shows in ``pg_stat_activity``
(and the backend pids the clients see), not only the pooler's own counters. Pool modes are checked by
what a client can observe: which backend it lands on and what session state it finds there.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import asyncpg
import psycopg
import pytest
from backends import Activity, PeakSampler, in_thread, wait_for_no_test_backends, wait_until, wait_until_sync
from harness import RunningPooler, make_config, running_pooler
from rawclient import RawClient, bind, execute, parse
from support import APP_DB, APP_PASSWORD, APP_USER, MD5_PASSWORD, MD5_USER, OTHER_DB, PostgresServer

from pooler.config import DatabaseConfig, PoolMode, UserConfig, UserlistEntry
from pooler.wire import messages as pq

pytestmark = pytest.mark.usefixtures("no_leftover_backends")

MD5 = {"user": MD5_USER, "password": MD5_PASSWORD}


def databases(postgres: PostgresServer, **entries: DatabaseConfig) -> dict[str, DatabaseConfig]:
    """appdb and otherdb plain, unless an entry is given for them."""
    out = {
        APP_DB: DatabaseConfig(name=APP_DB, host=postgres.host, port=postgres.port),
        OTHER_DB: DatabaseConfig(name=OTHER_DB, host=postgres.host, port=postgres.port),
    }
    out.update(entries)
    return out


async def apg(p: RunningPooler, dbname: str = APP_DB, **kw: str) -> asyncpg.Connection:
    return await asyncpg.connect(p.dsn(dbname, **kw), statement_cache_size=0, timeout=10)


async def hold_transactions(p: RunningPooler, count: int, hold: float, dbname: str = APP_DB, **kw: str) -> list[int]:
    """``count`` clients at once, each running one transaction that lasts ``hold`` seconds; their pids."""

    async def one() -> int:
        conn = await apg(p, dbname, **kw)
        try:
            async with conn.transaction():
                pid = await conn.fetchval("SELECT pg_backend_pid()")
                await conn.execute(f"SELECT pg_sleep({hold})")
            return int(pid)
        finally:
            await conn.close()

    return list(await asyncio.wait_for(asyncio.gather(*(one() for _ in range(count))), 60))


# -- pool size ---------------------------------------------------------------------------------------------


async def test_default_pool_size_caps_backends_and_queues_the_rest(postgres: PostgresServer, aactivity: Activity):
    with running_pooler(make_config(postgres, default_pool_size=5)) as p:
        async with PeakSampler(aactivity) as sampler:
            pids = await hold_transactions(p, 30, 0.1)
        assert len(pids) == 30  # every client completed
        assert len(set(pids)) == 5
        assert sampler.peak == 5, f"{sampler.peak} backends for (appdb, app) at once with default_pool_size=5"
        assert await aactivity.apids() == set(pids)
        assert p.pool_stat() == {"servers": 5, "idle": 5, "waiting": 0, "active": 0}


async def test_queued_clients_are_served_in_arrival_order(postgres: PostgresServer):
    with running_pooler(make_config(postgres, default_pool_size=1)) as p:
        holder = await psycopg.AsyncConnection.connect(p.dsn())
        await holder.execute("SELECT 1")  # opens a transaction: the only server is taken
        clients = [await apg(p) for _ in range(6)]
        tasks = []
        for i, conn in enumerate(clients):
            tasks.append(asyncio.create_task(conn.fetchrow("SELECT pg_backend_pid() AS pid, clock_timestamp() AS t")))
            await wait_until(lambda n=i + 1: p.pool_stat()["waiting"] == n, what=f"client {i} to queue")
        assert not any(t.done() for t in tasks)
        await holder.commit()
        rows = await asyncio.wait_for(asyncio.gather(*tasks), 10)
        assert len({r["pid"] for r in rows}) == 1
        served = sorted(range(len(rows)), key=lambda i: rows[i]["t"])
        assert served == list(range(6)), "the queue is not first in, first out"
        await holder.close()
        for conn in clients:
            await conn.close()


def test_max_client_conn_refuses_the_extra_client_only(postgres: PostgresServer, activity: Activity):
    with running_pooler(make_config(postgres, max_client_conn=2)) as p:
        a = psycopg.connect(p.dsn(), autocommit=True)
        b = psycopg.connect(p.dsn(), autocommit=True)
        with pytest.raises(psycopg.OperationalError, match=r"no more connections allowed \(max_client_conn\)"):
            psycopg.connect(p.dsn(), connect_timeout=5)  # libpq's default sslmode=prefer: SSLRequest first
        assert a.execute("SELECT 1").fetchone() == (1,)
        assert b.execute("SELECT 2").fetchone() == (2,)
        # A cancel request is a connection too, but never refused: it is how a full pooler gets unstuck.
        pid = a.execute("SELECT pg_backend_pid()").fetchone()
        sleeping = in_thread(lambda: a.execute("SELECT pg_sleep(10)"))
        wait_until_sync(
            lambda: any(r["query"] == "SELECT pg_sleep(10)" and (r["pid"],) == pid for r in activity.rows()),
            what="the query to run",
        )
        a.cancel_safe(timeout=5)
        with pytest.raises(psycopg.errors.QueryCanceled):
            sleeping.result(5)
        b.close()
        wait_until_sync(lambda: p.call(lambda pooler: len(pooler.clients)) == 1, what="the pooler to forget b")
        with psycopg.connect(p.dsn(), autocommit=True) as c:
            assert c.execute("SELECT 3").fetchone() == (3,)
        a.close()


async def test_max_db_connections_spans_the_pools_of_one_database(postgres: PostgresServer, aactivity: Activity):
    """Two users' pools of appdb share max_db_connections=2; when the second pool needs a server, an idle
    server of the first is closed to make room, and Postgres never sees more than 2 backends of appdb."""
    config = make_config(postgres, max_db_connections=2, default_pool_size=5)
    with running_pooler(config) as p:
        async with PeakSampler(aactivity, APP_DB, None) as sampler:
            holders = [await psycopg.AsyncConnection.connect(p.dsn()) for _ in range(2)]
            for h in holders:
                await h.execute("SELECT 1")  # both hold a transaction: appdb is at its cap
            md5 = asyncio.create_task(psycopg.AsyncConnection.connect(p.dsn(**MD5), autocommit=True))
            await wait_until(lambda: p.call(lambda pl: len(pl.pools)) == 2, what="md5user's pool")
            await asyncio.sleep(0.2)  # room would have been made by now if the cap were not enforced
            assert await aactivity.acount(APP_DB, None) == 2
            assert not md5.done()
            await holders[0].commit()  # one app server goes idle: it must make room for md5user
            conn = await asyncio.wait_for(md5, 5)
            cur = await conn.execute("SELECT current_user")
            assert await cur.fetchone() == (MD5_USER,)
            assert await aactivity.acount(APP_DB, MD5_USER) == 1
            await holders[1].execute("SELECT 2")  # the app client still in its transaction is unaffected
            # Now a queued client (md5user's pool has its parameters): app takes the whole cap again...
            await holders[0].execute("SELECT 3")  # ...closing md5user's idle server to make room
            assert p.pool_stat(user=MD5_USER)["servers"] == 0
            queued = asyncio.create_task(conn.execute("SELECT 4"))
            await wait_until(lambda: p.pool_stat(user=MD5_USER)["waiting"] == 1, what="md5user to queue")
            await holders[1].commit()  # released, and handed over to the other pool by closing it
            await asyncio.wait_for(queued, 5)
            await holders[0].commit()
        assert sampler.peak == 2
        for c in [*holders, conn]:
            await c.close()


@pytest.mark.parametrize("where", ["global", "database entry"])
async def test_max_db_connections_closes_idle_servers_of_another_pool(
    postgres: PostgresServer, aactivity: Activity, where: str
):
    if where == "global":
        config = make_config(postgres, max_db_connections=2, default_pool_size=5)
    else:
        entry = DatabaseConfig(APP_DB, host=postgres.host, port=postgres.port, max_db_connections=2)
        config = make_config(postgres, databases=databases(postgres, appdb=entry), default_pool_size=5)
    with running_pooler(config) as p:
        async with PeakSampler(aactivity, APP_DB, None) as sampler:
            await hold_transactions(p, 2, 0.05)  # two app servers, now idle
            assert p.pool_stat()["idle"] == 2
            conn = await asyncio.wait_for(psycopg.AsyncConnection.connect(p.dsn(**MD5), autocommit=True), 5)
            cur = await conn.execute("SELECT current_user")
            assert await cur.fetchone() == (MD5_USER,)
            await conn.close()
            assert p.pool_stat()["servers"] == 1
        assert sampler.peak == 2


async def test_max_user_connections_spans_databases(postgres: PostgresServer, aactivity: Activity):
    config = make_config(postgres, databases=databases(postgres), max_user_connections=2, default_pool_size=5)
    with running_pooler(config) as p:
        async with PeakSampler(aactivity, None, APP_USER) as sampler:
            holders = [await psycopg.AsyncConnection.connect(p.dsn(APP_DB)) for _ in range(2)]
            for h in holders:
                await h.execute("SELECT 1")
            # otherdb's new pool needs a first server login to welcome the client: app is at its cap
            connecting = asyncio.create_task(apg(p, OTHER_DB))
            await wait_until(lambda: p.call(lambda pl: len(pl.pools)) == 2, what="otherdb's pool")
            await asyncio.sleep(0.2)  # room would have been made by now if the cap were not enforced
            assert not connecting.done()
            assert await aactivity.acount(None, APP_USER) == 2
            await holders[0].commit()  # an appdb server goes idle: it must make room for otherdb
            other = await asyncio.wait_for(connecting, 5)
            assert await other.fetchval("SELECT current_database()") == OTHER_DB
            await holders[1].execute("SELECT 2")
            await holders[1].commit()
        assert sampler.peak == 2
        for c in holders:
            await c.close()
        await other.close()


async def test_per_user_max_user_connections(postgres: PostgresServer, aactivity: Activity):
    users = {APP_USER: UserConfig(APP_USER, max_user_connections=2)}
    with running_pooler(make_config(postgres, users=users, default_pool_size=10)) as p:
        async with PeakSampler(aactivity, None, APP_USER) as sampler:
            pids = await hold_transactions(p, 8, 0.05)
            md5_pids = await hold_transactions(p, 6, 0.05, **MD5)
        assert len(set(pids)) == 2
        assert sampler.peak == 2
        assert len(set(md5_pids)) > 2  # the cap is app's only


async def test_reserve_pool_opens_only_after_the_oldest_client_waited(postgres: PostgresServer, aactivity: Activity):
    timeout = 0.5
    config = make_config(postgres, default_pool_size=1, reserve_pool_size=2, reserve_pool_timeout=timeout)
    with running_pooler(config) as p:
        holder = await psycopg.AsyncConnection.connect(p.dsn())
        cur = await holder.execute("SELECT pg_backend_pid()")  # holds the only regular server
        (holder_pid,) = await cur.fetchone() or (0,)
        waiters = [await apg(p) for _ in range(3)]
        loop = asyncio.get_running_loop()
        started = loop.time()

        async def timed(conn: asyncpg.Connection) -> tuple[int, float]:
            async with conn.transaction():
                pid = await conn.fetchval("SELECT pg_backend_pid()")
                await conn.execute("SELECT pg_sleep(0.3)")
            return int(pid), loop.time() - started

        async with PeakSampler(aactivity) as sampler:
            results = await asyncio.wait_for(asyncio.gather(*(timed(w) for w in waiters)), 10)
        waited = sorted(t for _, t in results)
        assert waited[0] >= timeout * 0.9, f"a reserve server was used before reserve_pool_timeout: {waited}"
        assert waited[0] < timeout + 2
        pids = {pid for pid, _ in results}
        assert holder_pid not in pids
        assert len(pids) == 2  # two reserve servers; the third client reused one of them
        assert sampler.peak == 3  # pool_size + reserve_pool_size, never more
        await holder.commit()
        await holder.close()
        for w in waiters:
            await w.close()


async def test_min_pool_size_keeps_servers_open_without_clients(postgres: PostgresServer, aactivity: Activity):
    config = make_config(postgres, min_pool_size=3, server_idle_timeout=0.2)
    with running_pooler(config) as p:
        conn = await apg(p)
        assert await conn.fetchval("SELECT 1") == 1
        await conn.close()
        await wait_until(lambda: p.call(lambda pl: len(pl.clients)) == 0, what="the client to leave")
        pids = await wait_until(lambda: _exactly(aactivity, 3), what="min_pool_size backends")
        assert p.pool_stat()["idle"] == 3
        await asyncio.sleep(0.5)  # 2.5 server_idle_timeouts: idle servers beyond min_pool_size would be gone
        assert await aactivity.apids() == pids


async def _exactly(aactivity: Activity, count: int) -> set[int] | None:
    pids = await aactivity.apids()
    return pids if len(pids) == count else None


async def test_pool_size_per_database_and_per_user(postgres: PostgresServer, aactivity: Activity):
    dbs = databases(postgres, appdb=DatabaseConfig(APP_DB, host=postgres.host, port=postgres.port, pool_size=2))
    users = {MD5_USER: UserConfig(MD5_USER, pool_size=1)}  # the user's entry beats the database's
    with running_pooler(make_config(postgres, databases=dbs, users=users, default_pool_size=10)) as p:
        async with (
            PeakSampler(aactivity, APP_DB, APP_USER) as app_peak,
            PeakSampler(aactivity, APP_DB, MD5_USER) as md5_peak,
        ):
            app_pids, md5_pids = await asyncio.gather(hold_transactions(p, 6, 0.1), hold_transactions(p, 4, 0.1, **MD5))
            other_pids = await hold_transactions(p, 6, 0.05, OTHER_DB)  # no entry: default_pool_size
        assert len(set(app_pids)) == 2 and app_peak.peak == 2
        assert len(set(md5_pids)) == 1 and md5_peak.peak == 1
        assert len(set(other_pids)) > 2


async def test_one_pool_per_database_user_pair(postgres: PostgresServer, aactivity: Activity):
    with running_pooler(make_config(postgres, databases=databases(postgres), default_pool_size=1)) as p:
        pairs = [(APP_DB, {}), (APP_DB, MD5), (OTHER_DB, {})]
        conns = [await psycopg.AsyncConnection.connect(p.dsn(db, **kw)) for db, kw in pairs]
        seen = []
        for conn in conns:  # each holds its transaction open: with one shared pool the second would wait
            cur = await asyncio.wait_for(conn.execute("SELECT pg_backend_pid(), current_database(), current_user"), 5)
            seen.append(await cur.fetchone())
        assert len({pid for pid, _, _ in seen}) == 3
        assert [(db, user) for _, db, user in seen] == [(APP_DB, APP_USER), (APP_DB, MD5_USER), (OTHER_DB, APP_USER)]
        assert p.call(lambda pl: set(pl.pools)) == {(APP_DB, APP_USER), (APP_DB, MD5_USER), (OTHER_DB, APP_USER)}
        rows = await aactivity.arows(None, None)
        assert {(r["datname"], r["usename"]) for r in rows} >= {(APP_DB, APP_USER), (APP_DB, MD5_USER)}
        for conn in conns:
            await conn.close()


async def test_forced_user_puts_every_client_on_one_pool(postgres: PostgresServer, aactivity: Activity):
    forced = DatabaseConfig(APP_DB, host=postgres.host, port=postgres.port, user=APP_USER, password=APP_PASSWORD)
    with running_pooler(make_config(postgres, databases={APP_DB: forced}, default_pool_size=1)) as p:
        md5 = await psycopg.AsyncConnection.connect(p.dsn(**MD5))
        cur = await md5.execute("SELECT pg_backend_pid(), current_user")
        md5_pid, md5_role = await cur.fetchone() or (0, "")
        assert md5_role == APP_USER
        app = await apg(p)
        task = asyncio.create_task(app.fetchrow("SELECT pg_backend_pid(), current_user"))
        await wait_until(lambda: p.pool_stat()["waiting"] == 1, what="app to queue behind md5user's transaction")
        await md5.commit()
        assert tuple(await asyncio.wait_for(task, 5)) == (md5_pid, APP_USER)
        assert p.call(lambda pl: set(pl.pools)) == {(APP_DB, APP_USER)}
        assert await aactivity.acount(APP_DB, None) == 1
        await md5.close()
        await app.close()


def test_pgbench_through_a_small_pool(postgres: PostgresServer, pgbench: Path, activity: Activity, tmp_path):
    script = tmp_path / "tx.sql"
    script.write_text("BEGIN;\nSELECT pg_backend_pid();\nSELECT pg_sleep(0.002);\nEND;\n")
    with running_pooler(make_config(postgres, default_pool_size=3)) as p:
        env = {**os.environ, "PGPASSWORD": APP_PASSWORD}
        cmd = [str(pgbench), "-n", "-c", "12", "-j", "2", "-t", "15", "-f", str(script), "-M", "extended",
               "-h", "127.0.0.1", "-p", str(p.port), "-U", APP_USER, APP_DB]  # fmt: skip
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        peak = 0
        while proc.poll() is None:
            peak = max(peak, len(activity.pids()))
            time.sleep(0.005)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert "number of transactions actually processed: 180/180" in out, out
        assert "number of failed transactions: 0" in out, out
        assert 0 < peak <= 3
        assert len(activity.pids()) <= 3


# -- pool modes --------------------------------------------------------------------------------------------


async def test_transaction_mode_interleaves_clients_on_one_backend(postgres: PostgresServer):
    with running_pooler(make_config(postgres, default_pool_size=1)) as p:
        a, b = await apg(p), await apg(p)
        pids = [await c.fetchval("SELECT pg_backend_pid()") for c in (a, b, a, b, a)]
        assert len(set(pids)) == 1
        tx = a.transaction()
        await tx.start()
        await a.execute("CREATE TEMP TABLE mine (x int)")
        task = asyncio.create_task(b.fetchval("SELECT pg_backend_pid()"))
        await wait_until(lambda: p.pool_stat()["waiting"] == 1, what="b to queue behind a's transaction")
        assert await a.fetchval("SELECT count(*) FROM mine") == 0  # a keeps its backend meanwhile
        assert not task.done()
        await tx.rollback()
        assert await asyncio.wait_for(task, 5) == pids[0]
        await a.close()
        await b.close()


@pytest.mark.parametrize("reset_query", ["DISCARD ALL", ""])
def test_session_mode_keeps_the_backend_and_resets_it_for_the_next_client(postgres: PostgresServer, reset_query: str):
    with psycopg.connect(postgres.dsn(APP_DB, APP_USER, APP_PASSWORD)) as plain:
        (default_work_mem,) = plain.execute("SELECT current_setting('work_mem')").fetchone() or ("",)
    assert default_work_mem != "7MB"
    config = make_config(postgres, pool_mode=PoolMode.SESSION, default_pool_size=1, server_reset_query=reset_query)
    with running_pooler(config) as p:
        a = psycopg.connect(p.dsn())
        pid = a.execute("SELECT pg_backend_pid()").fetchone()
        a.execute("CREATE TEMP TABLE session_state (x int)")
        a.execute("SET work_mem = '7MB'")
        a.commit()
        for _ in range(3):  # several transactions, one backend, state intact
            row = a.execute("SELECT pg_backend_pid(), current_setting('work_mem')").fetchone()
            assert row is not None and (row[0],) == pid and row[1] == "7MB"
            assert a.execute("SELECT count(*) FROM session_state").fetchone() == (0,)
            a.commit()
        b = psycopg.connect(p.dsn(), autocommit=True)  # logs in, but the only server is a's for its session
        with b.cursor() as cur:
            cur_task = in_thread(
                lambda: cur.execute(
                    "SELECT pg_backend_pid(), current_setting('work_mem'), to_regclass('pg_temp.session_state') IS NULL"
                ).fetchone()
            )
            wait_until_sync(lambda: p.pool_stat()["waiting"] == 1, what="b to wait for a's session")
            a.close()
            b_pid, work_mem, temp_gone = cur_task.result(10) or (0, "", False)
        assert (b_pid,) == pid
        if reset_query:
            assert (work_mem, temp_gone) == (default_work_mem, True), "server_reset_query did not run before reuse"
        else:
            assert (work_mem, temp_gone) == ("7MB", False)  # no reset query: the session leaks, as in PgBouncer
        b.close()


def test_statement_mode_refuses_transaction_blocks(postgres: PostgresServer, activity: Activity):
    config = make_config(postgres, pool_mode=PoolMode.STATEMENT, default_pool_size=1)
    with running_pooler(config) as p:
        a = psycopg.connect(p.dsn(), autocommit=True)
        b = psycopg.connect(p.dsn(), autocommit=True)
        pids = {c.execute("SELECT pg_backend_pid()").fetchone() for c in (a, b, a, b)}
        assert len(pids) == 1
        a.execute("BEGIN; SELECT 1; COMMIT")  # one simple-protocol message that ends idle is one statement
        with pytest.raises(psycopg.OperationalError, match="transaction blocks not allowed in statement pooling mode"):
            a.execute("BEGIN")  # the statement that opens the block fails, as with PgBouncer
        assert a.closed or a.broken
        # The pool goes on serving, and no backend is left inside the refused transaction.
        assert b.execute("SELECT txid_current_if_assigned()").fetchone() == (None,)
        wait_until_sync(lambda: [r["state"] for r in activity.rows()] == ["idle"], what="only idle backends")
        b.close()
        a.close()


def test_pool_mode_per_database_and_per_user_override_the_global(postgres: PostgresServer):
    dbs = databases(
        postgres, otherdb=DatabaseConfig(OTHER_DB, host=postgres.host, port=postgres.port, pool_mode=PoolMode.STATEMENT)
    )
    users = {MD5_USER: UserConfig(MD5_USER, pool_mode=PoolMode.SESSION)}
    config = make_config(postgres, databases=dbs, users=users, default_pool_size=1)  # global: transaction
    with running_pooler(config) as p:
        # otherdb: statement mode from its database entry
        with (
            psycopg.connect(p.dsn(OTHER_DB), autocommit=True) as c,
            pytest.raises(psycopg.OperationalError, match="statement pooling mode"),
        ):
            c.execute("BEGIN")
        # md5user on otherdb: the user's session mode beats the database's statement mode
        first = psycopg.connect(p.dsn(OTHER_DB, **MD5), autocommit=True)
        first.execute("BEGIN")
        first.execute("COMMIT")
        second = psycopg.connect(p.dsn(OTHER_DB, **MD5), autocommit=True)
        with second.cursor() as cur:
            result = in_thread(lambda: cur.execute("SELECT 1").fetchone())
            wait_until_sync(lambda: p.pool_stat(OTHER_DB, MD5_USER)["waiting"] == 1, what="session mode to hold")
            first.close()
            assert result.result(10) == (1,)
        second.close()
        # app on appdb: the global transaction mode; the server is released after each transaction
        a = psycopg.connect(p.dsn(APP_DB))
        b = psycopg.connect(p.dsn(APP_DB))
        pid_a = a.execute("SELECT pg_backend_pid()").fetchone()
        a.commit()
        assert b.execute("SELECT pg_backend_pid()").fetchone() == pid_a
        b.commit()
        a.close()
        b.close()


def test_a_reload_that_changes_pool_mode_applies_to_connected_clients(postgres: PostgresServer) -> None:
    """The one answer to "which pool_mode applies to a client whose pool changed": the pool's current one,
    read when each transaction ends (docs/settings.md, pool_mode)."""
    config = make_config(postgres, default_pool_size=1, pool_mode=PoolMode.SESSION)
    with running_pooler(config) as p, psycopg.connect(p.dsn(), autocommit=True) as held:
        held.execute("SELECT 1")
        assert p.pool_stat() == {"servers": 1, "idle": 0, "waiting": 0, "active": 1}  # session mode keeps it
        p.reload(make_config(postgres, default_pool_size=1, pool_mode=PoolMode.TRANSACTION))
        held.execute("SELECT 1")  # the end of this transaction reads the new mode
        assert p.pool_stat() == {"servers": 1, "idle": 1, "waiting": 0, "active": 0}


def test_a_refused_server_login_does_not_fail_clients_other_servers_can_serve(postgres: PostgresServer) -> None:
    """Postgres out of slots for one more login (53300) must not fail the queue the open servers serve."""
    with psycopg.connect(postgres.dsn(), autocommit=True) as admin:
        admin.execute("DROP ROLE IF EXISTS limited")
        admin.execute("CREATE ROLE limited LOGIN PASSWORD 'limited-secret' CONNECTION LIMIT 2")
        admin.execute(f"GRANT CONNECT ON DATABASE {APP_DB} TO limited")
    userlist = (UserlistEntry("limited", "limited-secret"),)
    try:
        with running_pooler(make_config(postgres, default_pool_size=5, userlist=userlist)) as pooler:
            def work(_: int) -> tuple[int]:
                with psycopg.connect(pooler.dsn(user="limited", password="limited-secret"), autocommit=True) as c:
                    row = c.execute("select count(*) from pg_sleep(0.2)").fetchone()
                    assert row is not None
                    return (row[0],)

            with ThreadPoolExecutor(10) as executor:
                results = list(executor.map(work, range(10)))
            assert results == [(1,)] * 10  # all served by the two servers Postgres allowed
    finally:
        with psycopg.connect(postgres.dsn(), autocommit=True) as admin:
            wait_for_no_test_backends(postgres)
            admin.execute(f"REVOKE CONNECT ON DATABASE {APP_DB} FROM limited")
            admin.execute("DROP ROLE limited")


# -- COPY pipelined in one write (issue 10, item 2) ----------------------------------------------------------


@pytest.mark.parametrize("protocol", ["simple", "extended"])
def test_pipelined_copy_releases_its_server(postgres: PostgresServer, table: str, protocol: str) -> None:
    """Query(COPY) + CopyData + CopyDone in one write reached the pooler before Postgres's CopyInResponse,
    which left the server believing it was still in a COPY: the next client on a pool of one waited forever."""
    sql = f"COPY {table} (id, v) FROM STDIN"
    copy = pq.build(b"d", b"7\t7\n") + pq.build(b"c")
    if protocol == "simple":
        burst = pq.query(sql) + copy
    else:
        burst = parse(sql) + bind([]) + execute() + pq.SYNC_MESSAGE + copy + pq.SYNC_MESSAGE
    with running_pooler(make_config(postgres, default_pool_size=1)) as p, RawClient(p.port) as first:
        first.login(APP_USER, APP_PASSWORD, APP_DB)
        first.send(burst)
        kinds = "".join(m.kind for m in first.read_until("Z"))
        assert "G" in kinds and "C" in kinds and "E" not in kinds, kinds
        wait_until_sync(lambda: p.pool_stat()["idle"] == 1, timeout=5, what="the server back in the pool")
        with psycopg.connect(p.dsn(), autocommit=True, connect_timeout=5) as second:
            second.execute("SET statement_timeout = '5s'")
            assert second.execute(f"SELECT v FROM {table} WHERE id = 7").fetchone() == (7,)
