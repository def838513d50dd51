"""The pooler between real clients and a Postgres reached through ``faultproxy.FaultProxy``: split writes,
resets, stalls and black holes on the server side (issue 10, item 9a).

What must hold whatever the wire does: every answer a client gets is right, a broken server costs its
client a Postgres-shaped error (never a hang, never someone else's answer), and the pool serves
new work once the wire is healthy again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import asyncpg
import psycopg
import pytest
from faultproxy import FaultProxy
from harness import make_config, running_pooler
from support import APP_DB, PostgresServer

from pooler.config import Config, DatabaseConfig


@pytest.fixture
def proxy(postgres: PostgresServer) -> Iterator[FaultProxy]:
    with FaultProxy(postgres.host, postgres.port, seed=10) as running:
        yield running


def proxied(postgres: PostgresServer, proxy: FaultProxy, **settings: object) -> Config:
    """appdb through the proxy; no direct endpoint (a fixed free port could be taken by a parallel run)."""
    databases = {APP_DB: DatabaseConfig(name=APP_DB, host="127.0.0.1", port=proxy.port)}
    return make_config(postgres, databases=databases, direct_port=0, **settings)


def wait_until(predicate: object, timeout: float = 10) -> None:
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


async def test_split_writes_both_ways_keep_every_answer_right(postgres: PostgresServer, proxy: FaultProxy) -> None:
    """Every chunk cut in 1-64 byte pieces: extended-protocol queries, COPY and large rows still come back whole,
    through unnamed statements and through named ones (each first use a tracked segment, whose answers once
    left a stale ServerConnection._skip behind when split: test_named_statements_answered_in_split_chunks)."""
    proxy.split = True
    with running_pooler(proxied(postgres, proxy, default_pool_size=2)) as pooler:

        async def worker(i: int) -> None:
            conn = await asyncpg.connect(pooler.dsn(), statement_cache_size=0 if i % 2 else 100)
            try:
                for j in range(8):
                    assert await conn.fetchval("select $1::int * 2", j) == 2 * j
                    rows = await conn.fetch("select g, repeat('x', g * 50) from generate_series(1, $1::int) g", j + 1)
                    assert [(r[0], len(r[1])) for r in rows] == [(g, g * 50) for g in range(1, j + 2)]
                    async with conn.transaction():
                        await conn.execute("create temp table if not exists t (v int) on commit drop")
                        await conn.copy_records_to_table("t", records=[(k,) for k in range(100)])
                        assert await conn.fetchval("select sum(v) from t") == sum(range(100))
                big = await conn.fetchval("select repeat('y', 300000)")
                assert big == "y" * 300000
            finally:
                await conn.close()

        await asyncio.gather(*(worker(i) for i in range(6)))
        with psycopg.connect(pooler.dsn(), autocommit=True) as conn:
            for k in range(10):
                assert conn.execute("select %s::text || 'z'", (str(k),)).fetchone() == (f"{k}z",)


def test_reset_of_every_server_costs_clients_an_error_then_the_pool_recovers(
    postgres: PostgresServer, proxy: FaultProxy
) -> None:
    with running_pooler(proxied(postgres, proxy, default_pool_size=2)) as pooler:
        idle = psycopg.connect(pooler.dsn(), autocommit=True)
        busy = psycopg.connect(pooler.dsn(), autocommit=True)
        in_tx = psycopg.connect(pooler.dsn())
        try:
            assert idle.execute("select 1").fetchone() == (1,)
            in_tx.execute("select 1")  # holds a server inside a transaction
            errors: list[BaseException] = []

            def sleeper() -> None:
                try:
                    busy.execute("select pg_sleep(5)")
                except psycopg.Error as exc:
                    errors.append(exc)

            import threading

            thread = threading.Thread(target=sleeper)
            thread.start()
            wait_until(lambda: pooler.pool_stat()["active"] == 2)
            assert proxy.reset() >= 2
            thread.join(10)
            assert not thread.is_alive()
            assert len(errors) == 1 and isinstance(errors[0], psycopg.OperationalError)
            assert "server conn crashed" in str(errors[0]) or "terminat" in str(errors[0]) or "closed" in str(errors[0])
            with pytest.raises(psycopg.OperationalError):
                in_tx.execute("select 2")  # its transaction is gone, and it is told so
            # An idle client lost nothing: its next query gets a fresh server.
            assert idle.execute("select 3").fetchone() == (3,)
            with psycopg.connect(pooler.dsn(), autocommit=True) as fresh:
                assert fresh.execute("select 4").fetchone() == (4,)
        finally:
            for conn in (idle, busy, in_tx):
                conn.close()


def test_a_stalled_server_times_out_with_query_timeout_and_service_resumes(
    postgres: PostgresServer, proxy: FaultProxy
) -> None:
    with running_pooler(proxied(postgres, proxy, default_pool_size=1, query_timeout=0.5)) as pooler:
        with psycopg.connect(pooler.dsn(), autocommit=True) as conn:
            assert conn.execute("select 1").fetchone() == (1,)
            proxy.stall()
            started = time.monotonic()
            with pytest.raises(psycopg.OperationalError) as caught:
                conn.execute("select 2")
            assert time.monotonic() - started < 5
            assert "query_timeout" in str(caught.value)
        proxy.resume()
        with psycopg.connect(pooler.dsn(), autocommit=True) as conn:
            assert conn.execute("select 5").fetchone() == (5,)


def test_a_black_hole_at_login_fails_the_client_in_time_then_logins_work(
    postgres: PostgresServer, proxy: FaultProxy
) -> None:
    config = proxied(postgres, proxy, server_connect_timeout=0.5, server_login_retry=0.2, query_wait_timeout=2)
    with running_pooler(config) as pooler:
        proxy.drop()
        started = time.monotonic()
        with pytest.raises(psycopg.OperationalError) as caught:
            psycopg.connect(pooler.dsn(), connect_timeout=10).close()
        assert time.monotonic() - started < 8
        assert caught.value.sqlstate is not None or "timeout" in str(caught.value).lower(), caught.value
        proxy.heal()
        deadline = time.monotonic() + 5
        while True:  # the failed login is cached for server_login_retry, then the pool tries again
            try:
                with psycopg.connect(pooler.dsn(), autocommit=True) as conn:
                    assert conn.execute("select 6").fetchone() == (6,)
                break
            except psycopg.OperationalError:
                assert time.monotonic() < deadline
                time.sleep(0.1)


def test_postgres_refusing_connections_gives_a_postgres_shaped_error(
    postgres: PostgresServer, proxy: FaultProxy
) -> None:
    config = proxied(postgres, proxy, server_login_retry=0.2, query_wait_timeout=1)
    with running_pooler(config) as pooler:
        proxy.refuse()
        started = time.monotonic()
        with pytest.raises(psycopg.OperationalError) as caught:
            psycopg.connect(pooler.dsn()).close()
        assert time.monotonic() - started < 5  # queued while the pool retries, then query_wait_timeout
        assert "FATAL:  " in str(caught.value), caught.value  # libpq shows no SQLSTATE at connect
        proxy.refuse(False)
        deadline = time.monotonic() + 5
        while True:
            try:
                with psycopg.connect(pooler.dsn(), autocommit=True) as conn:
                    assert conn.execute("select 7").fetchone() == (7,)
                break
            except psycopg.OperationalError:
                assert time.monotonic() < deadline
                time.sleep(0.1)


# How the pieces fall; which seeds hang varies with timing: 2-3 of 6 per run here.
@pytest.mark.parametrize("seed", range(6))
async def test_named_statements_answered_in_split_chunks(postgres: PostgresServer, seed: int) -> None:
    """Found by the split-writes proxy: a named statement's first use answered in chunks that cut its messages
    left ServerConnection._skip stale, so the next chunk was scanned from a wrong offset and the client hung."""
    with FaultProxy(postgres.host, postgres.port, seed=seed) as proxy:
        proxy.split = True  # 1-64 byte pieces
        databases = {APP_DB: DatabaseConfig(name=APP_DB, host="127.0.0.1", port=proxy.port)}
        config = make_config(postgres, databases=databases, default_pool_size=1, query_wait_timeout=5)
        with running_pooler(config) as pooler:
            conn = await asyncpg.connect(pooler.dsn())  # named statements: each first use is a tracked segment
            try:
                assert await asyncio.wait_for(conn.fetchval("select $1::int * 2", 3), 3) == 6
                sql = "select g, repeat('x', g * 50) from generate_series(1, $1::int) g"
                rows = await asyncio.wait_for(conn.fetch(sql, 5), 3)  # times out today
                assert [r[0] for r in rows] == [1, 2, 3, 4, 5]
            finally:
                conn.terminate()
