"""Protocol-level named prepared statements under transaction pooling, with real drivers and raw frames.

Every test runs many clients (or one client across several servers) on a pool of two, so a
statement prepared on one server is routinely bound on another.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import psycopg
import pytest
from harness import RunningPooler, make_config, running_pooler
from rawclient import Message, RawClient, bind, describe_statement, execute, parse
from support import APP_DB, APP_PASSWORD, APP_USER, PostgresServer

from pooler.config import PoolMode
from pooler.runtime.process import Pooler
from pooler.wire import messages as pq


def close_statement(name: str) -> bytes:
    return pq.build(b"C", b"S" + pq.cstring(name))


@pytest.fixture(scope="module")
def pooler(postgres: PostgresServer) -> Iterator[RunningPooler]:
    with running_pooler(make_config(postgres, default_pool_size=2)) as running:
        yield running


def server_statements(pooler: RunningPooler) -> list[int]:
    """How many statements each server of the appdb/app pool has prepared, per the pooler."""
    return pooler.call(lambda p: [len(s.statements.prepared) for s in p.pools[(APP_DB, APP_USER)].servers])


def login(pooler: RunningPooler) -> RawClient:
    client = RawClient(pooler.port)
    client.login(APP_USER, APP_PASSWORD, APP_DB)
    return client


def kinds(messages: list[Message]) -> str:
    return "".join(m.kind for m in messages)


def test_pgbench_prepared_with_many_clients_on_two_servers(pooler: RunningPooler, pgbench: Path) -> None:
    env = {**os.environ, "PGPASSWORD": APP_PASSWORD}
    common = ["-h", "127.0.0.1", "-U", APP_USER]
    subprocess.run([str(pgbench), "-i", "-q", "-s", "1", "-p", str(pooler.direct_port), *common, APP_DB],
                   env=env, check=True, capture_output=True, timeout=120)
    result = subprocess.run(
        [str(pgbench), "-S", "-M", "prepared", "-c", "20", "-j", "2", "-t", "200", "-p", str(pooler.port), *common,
         APP_DB], env=env, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert "number of transactions actually processed: 4000/4000" in result.stdout
    assert re.search(r"number of failed transactions: 0 ", result.stdout)
    assert all(n >= 1 for n in server_statements(pooler))  # both servers carry the shared statement


async def test_asyncpg_with_its_statement_cache(pooler: RunningPooler) -> None:
    async def worker(i: int) -> None:
        conn = await asyncpg.connect(pooler.dsn())  # the default statement cache: named statements
        try:
            for j in range(40):
                assert await conn.fetchval("select $1::int + $2::int", i, j) == i + j
                rows = await conn.fetch("select g from generate_series(1, $1::int) g", j % 4 + 1)
                assert [r["g"] for r in rows] == list(range(1, j % 4 + 2))
                async with conn.transaction():
                    assert await conn.fetchval("select $1::text || 'x'", str(i)) == f"{i}x"
            statement = await conn.prepare("select $1::int * 2")
            assert await statement.fetchval(21) == 42
        finally:
            await conn.close()

    await asyncio.gather(*(worker(i) for i in range(25)))
    assert pooler.call(lambda p: len(p.statements)) >= 4  # asyncpg's statements went through the cache


def test_psycopg_server_side_prepared_statements(pooler: RunningPooler) -> None:
    def worker(i: int) -> None:
        with psycopg.connect(pooler.dsn(), prepare_threshold=0, autocommit=True) as conn:
            for j in range(30):
                assert conn.execute("select %s::int + %s::int", (i, j)).fetchone() == (i + j,)
                assert conn.execute("select %s::text", (str(j),), prepare=True).fetchone() == (str(j),)

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(12) as executor:
        list(executor.map(worker, range(12)))


def test_a_statement_prepared_on_one_server_is_bound_on_another(
    pooler: RunningPooler, postgres: PostgresServer
) -> None:
    with login(pooler) as client:
        client.send(parse("select $1::int + 1", "s1") + pq.SYNC_MESSAGE)
        assert kinds(client.read_until("Z")) == "1Z"
        first = client.simple_query("select pg_backend_pid()")
        pid = int(next(m for m in first if m.kind == "D").payload[6:])
        with psycopg.connect(postgres.dsn(APP_DB), autocommit=True) as admin:  # kill the server it used
            admin.execute("select pg_terminate_backend(%s)", (pid,))
        deadline = time.monotonic() + 10  # until the pooler has read its FATAL (else the next Bind could race it)
        while pid in pooler.call(lambda p: {s.key[0] for s in p.pools[(APP_DB, APP_USER)].servers if s.key}):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        for _ in range(4):  # whichever server the Bind lands on, it works: a hidden Parse comes first
            client.send(bind([b"41"], "s1") + execute() + pq.SYNC_MESSAGE)
            messages = client.read_until("Z")
            assert kinds(messages) == "2DCZ", messages
            assert messages[1].payload.endswith(b"42")


def test_pipeline_of_several_statements_keeps_answers_in_order(pooler: RunningPooler) -> None:
    with login(pooler) as a, login(pooler) as b:
        b.send(parse("select 'b'", "x") + pq.SYNC_MESSAGE)  # the same query, prepared by someone else first
        assert kinds(b.read_until("Z")) == "1Z"
        a.send(
            parse("select 'b'", "one")  # known to the pooler: maybe answered without the server
            + parse("select $1::int * 10", "two")
            + bind([], "one") + execute()
            + bind([b"7"], "two") + execute()
            + describe_statement("two")
            + pq.SYNC_MESSAGE
            + bind([b"8"], "two") + execute() + pq.SYNC_MESSAGE
        )
        first = a.read_until("Z")
        assert kinds(first) == "112DC2DCtTZ", first
        second = a.read_until("Z")
        assert kinds(second) == "2DCZ", second
        assert second[1].payload.endswith(b"80")


def test_failed_parse_leaves_no_stale_entry(pooler: RunningPooler) -> None:
    with login(pooler) as client:
        client.send(parse("selec 1", "bad") + bind([], "bad") + execute() + pq.SYNC_MESSAGE)
        messages = client.read_until("Z")
        assert kinds(messages) == "EZ"
        assert messages[0].fields["C"] == "42601"  # Postgres's syntax error, not a pooler error
        client.send(bind([], "bad") + execute() + pq.SYNC_MESSAGE)
        assert client.read_until("Z")[0].fields["M"] == "prepared statement did not exist"
        client.send(parse("select 1", "bad") + bind([], "bad") + execute() + pq.SYNC_MESSAGE)
        assert kinds(client.read_until("Z")) == "12DCZ"  # the name is free again


def test_errors_for_name_reuse_and_unknown_names(pooler: RunningPooler) -> None:
    with login(pooler) as client:
        client.send(parse("select 1", "dup") + pq.SYNC_MESSAGE)
        assert kinds(client.read_until("Z")) == "1Z"
        client.send(parse("select 2", "dup") + bind([], "dup") + execute() + pq.SYNC_MESSAGE)
        messages = client.read_until("Z")
        assert kinds(messages) == "EZ", messages  # like Postgres: the rest of the segment is not run
        assert messages[0].fields["C"] == "42P05"
        assert messages[0].fields["M"] == "prepared statement name is already in use"
        client.send(bind([], "nope") + execute() + pq.SYNC_MESSAGE)
        error = client.read_until("Z")[0].fields
        assert (error["C"], error["M"]) == ("26000", "prepared statement did not exist")
        assert '"nope"' in error["D"]
        assert kinds(client.simple_query("select 1")) == "TDCZ"  # the connection is fine afterwards


def test_close_forgets_only_the_clients_name(pooler: RunningPooler) -> None:
    with login(pooler) as client:
        client.send(parse("select 5", "c1") + close_statement("c1") + pq.SYNC_MESSAGE)
        assert kinds(client.read_until("Z")) == "13Z"
        client.send(bind([], "c1") + execute() + pq.SYNC_MESSAGE)
        assert client.read_until("Z")[0].fields["C"] == "26000"
        client.send(parse("select 6", "c1") + bind([], "c1") + execute() + pq.SYNC_MESSAGE)
        assert kinds(client.read_until("Z")) == "12DCZ"


@pytest.mark.parametrize("reset", ["DEALLOCATE ALL", "DISCARD ALL"])
def test_deallocate_all_and_discard_all_clear_the_maps(pooler: RunningPooler, reset: str) -> None:
    with login(pooler) as client:
        client.send(parse("select 9", "d1") + pq.SYNC_MESSAGE)
        assert kinds(client.read_until("Z")) == "1Z"
        assert kinds(client.simple_query(reset))[-2:] == "CZ"
        client.send(bind([], "d1") + execute() + pq.SYNC_MESSAGE)
        assert client.read_until("Z")[0].fields["C"] == "26000"
        for _ in range(3):  # re-preparing works on every server, including the one that was reset
            client.send(parse("select 9", "d1") + bind([], "d1") + execute() + close_statement("d1") + pq.SYNC_MESSAGE)
            assert kinds(client.read_until("Z")) == "12DC3Z"


def test_eviction_keeps_each_server_under_max_prepared_statements(postgres: PostgresServer) -> None:
    with running_pooler(make_config(postgres, default_pool_size=2, max_prepared_statements=2)) as pooler:
        with login(pooler) as client:
            for i in range(4):
                client.send(parse(f"select {i} as n", f"e{i}") + pq.SYNC_MESSAGE)
                assert kinds(client.read_until("Z")) == "1Z"
            for round_ in range(3):
                for i in range(4):
                    client.send(bind([], f"e{i}") + execute() + pq.SYNC_MESSAGE)
                    messages = client.read_until("Z")
                    assert kinds(messages) == "2DCZ", (round_, i, messages)
                    assert messages[1].payload.endswith(str(i).encode())
                counts = client.simple_query("select count(*) from pg_prepared_statements")
                assert int(counts[1].payload[6:]) <= 2  # what Postgres itself holds on that server
        assert all(n <= 2 for n in server_statements(pooler))


def test_session_mode_passes_named_statements_through(postgres: PostgresServer) -> None:
    with running_pooler(make_config(postgres, pool_mode=PoolMode.SESSION)) as pooler, login(pooler) as client:
        client.send(parse("select 1", "mine") + pq.SYNC_MESSAGE)
        assert kinds(client.read_until("Z")) == "1Z"
        names = client.simple_query("select name from pg_prepared_statements")
        assert any(m.kind == "D" and m.payload.endswith(b"mine") for m in names)  # the client's own name
        assert pooler.call(lambda p: len(p.statements)) == 0


def test_shared_cache_prepares_one_server_statement_per_query(pooler: RunningPooler) -> None:
    with login(pooler) as a, login(pooler) as b:
        for client in (a, b):
            client.send(parse("select 'shared'", "mine") + bind([], "mine") + execute() + pq.SYNC_MESSAGE)
            assert kinds(client.read_until("Z")) == "12DCZ"
        names = a.simple_query("select name from pg_prepared_statements where statement = 'select ''shared'''")
        rows = [m for m in names if m.kind == "D"]
        assert len(rows) == 1 and b"pooler_" in rows[0].payload

    def cache_size(p: Pooler) -> int:
        return len(p.statements)

    assert pooler.call(cache_size) >= 1


def test_admin_console_counts_prepared_statements(postgres: PostgresServer) -> None:
    config = make_config(postgres, default_pool_size=1, admin_users=(APP_USER,))
    with running_pooler(config) as pooler, login(pooler) as client:
        client.send(parse("select 11", "a") + parse("select 12", "b") + pq.SYNC_MESSAGE)
        assert kinds(client.read_until("Z")) == "11Z"
        with psycopg.connect(pooler.dsn("pgbouncer"), autocommit=True) as admin:
            cur = admin.execute("SHOW CLIENTS")
            clients = cur.fetchall()
            names = [d.name for d in cur.description or ()]
            counts = [row[names.index("prepared_statements")] for row in clients
                      if row[names.index("database")] == APP_DB]
            assert counts == [2]  # the raw client's two names
            cur = admin.execute("SHOW SERVERS")
            servers = cur.fetchall()
            names = [d.name for d in cur.description or ()]
            assert [row[names.index("prepared_statements")] for row in servers] == [2]


def test_a_parse_without_a_terminated_name_gets_an_error_not_a_hang(postgres: PostgresServer) -> None:
    """Found by the live fuzzer: a whole Parse whose name has no NUL inside it made the scanner wait forever for
    "the rest" of a complete message. It is forwarded as it is now, and Postgres refuses it."""
    config = make_config(postgres, default_pool_size=1)
    with running_pooler(config) as pooler, RawClient(pooler.port, timeout=3) as client:
        client.login(APP_USER, APP_PASSWORD, APP_DB)
        client.send(b"P\x00\x00\x00\x04" + pq.SYNC_MESSAGE + pq.query("select 1"))
        messages = client.read_until("Z")  # TimeoutError today
        assert messages[0].kind == "E" and messages[0].fields["C"] == "08P01", messages
