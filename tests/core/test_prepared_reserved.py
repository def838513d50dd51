"""Names the pooler owns (``pooler_<n>``) cannot be taken away from other clients through SQL (issue 10, item 7).

The victims are real drivers that prepare with the protocol (asyncpg's statement cache, pgbench -M prepared);
the attacker is psycopg sending SQL ``DEALLOCATE`` / ``PREPARE`` through the pooled endpoint. One server in
the pool, so attacker and victim always share it.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import psycopg
import pytest
from harness import RunningPooler, make_config, running_pooler
from rawclient import RawClient, bind, execute, parse
from support import APP_DB, APP_PASSWORD, APP_USER, PostgresServer

from pooler.core.prepared import reserved_name_refusal
from pooler.wire import messages as pq


@pytest.fixture(scope="module")
def pooler(postgres: PostgresServer) -> Iterator[RunningPooler]:
    with running_pooler(make_config(postgres, default_pool_size=1)) as running:
        yield running


def server_names(pooler: RunningPooler) -> set[str]:
    """The pooler statement names Postgres holds on the pool's server."""
    with psycopg.connect(pooler.dsn(), autocommit=True) as conn:
        rows = conn.execute("select name from pg_prepared_statements where name like 'pooler%'").fetchall()
    return {r[0] for r in rows}


@pytest.mark.parametrize(
    "sql",
    [
        "DEALLOCATE {name}",
        "deallocate prepare {name};",
        'DEALLOCATE "{name}"',
        "DEALLOCATE {upper}",
        "PREPARE {name} AS select 'evil'",
        "prepare pooler_999999 (int) as select $1",
    ],
)
async def test_sql_on_a_pooler_name_is_refused_and_the_victim_never_notices(
    pooler: RunningPooler, sql: str
) -> None:
    victim = await asyncpg.connect(pooler.dsn())
    try:
        statement = await victim.prepare("select $1::int * 3")
        assert await statement.fetchval(2) == 6
        name = next(n for n in server_names(pooler) if n.startswith("pooler_"))
        text = sql.format(name=name, upper=name.upper())
        with psycopg.connect(pooler.dsn(), autocommit=True) as attacker:
            with pytest.raises(psycopg.Error) as caught:
                attacker.execute(text)
            diag = caught.value.diag
            assert diag.sqlstate == "42939", text
            assert re.fullmatch(r'prepared statement name "pooler_\d+" is reserved', diag.message_primary or "")
            assert "Close" in (diag.message_hint or "")
            assert attacker.execute("select 1").fetchone() == (1,)  # the attacker's session goes on
            # inside a block, the refusal fails the block as Postgres would
            with attacker.transaction(), pytest.raises(psycopg.errors.ReservedName):
                attacker.execute(text)
        for i in range(5):
            assert await statement.fetchval(i) == i * 3
            assert await victim.fetchval("select $1::int * 3", i) == i * 3
    finally:
        await victim.close()


def test_refusal_matches_only_reserved_names() -> None:
    refused = [b"DEALLOCATE pooler_1", b"deallocate\n\tprepare  pooler_2", b'prepare "pooler_3" as select 1',
               b"PREPARE POOLER_4(int) AS select $1", b"DEALLOCATE pooler_5;select 1"]
    allowed = [b"DEALLOCATE ALL", b"DEALLOCATE mine", b"DEALLOCATE pooler_1x", b'DEALLOCATE "POOLER_1"',
               b"PREPARE pooler_ AS select 1", b"DELETE FROM pooler_1", b"prepared", b"PREPARE p AS select 'pooler_1'"]
    assert all(reserved_name_refusal(q) is not None for q in refused)
    assert all(reserved_name_refusal(q) is None for q in allowed)


@pytest.mark.parametrize(
    ("sql", "victim_errors"),
    [
        ("select 1; DEALLOCATE {name}", 0),  # not first: Postgres runs it, and its tag retires the server
        ("/* hidden */ DEALLOCATE {name}", 0),
        ("DO $$ BEGIN EXECUTE 'DEALLOCATE {name}'; END $$", 1),  # no tag: the victim's 26000 repairs the record
    ],
)
async def test_a_deallocate_the_front_check_misses_costs_the_victim_at_most_one_error(
    pooler: RunningPooler, sql: str, victim_errors: int
) -> None:
    victim = await asyncpg.connect(pooler.dsn())
    try:
        statement = await victim.prepare("select $1::int + 100")
        assert await statement.fetchval(1) == 101
        name = next(iter(server_names(pooler)))
        with psycopg.connect(pooler.dsn(), autocommit=True) as attacker:
            attacker.execute(sql.format(name=name))
        assert name not in server_names(pooler)  # it did deallocate (or its server was retired)
        failures = 0
        for i in range(6):
            try:
                assert await statement.fetchval(i) == 100 + i
            except asyncpg.PostgresError as exc:
                assert exc.sqlstate == "26000", exc
                failures += 1
        assert failures == victim_errors
        assert await statement.fetchval(7) == 107  # and it recovered
    finally:
        await victim.close()


def test_pgbench_prepared_survives_a_deallocating_neighbour(
    pooler: RunningPooler, pgbench: Path, tmp_path: Path
) -> None:
    env = {**os.environ, "PGPASSWORD": APP_PASSWORD}
    common = ["-h", "127.0.0.1", "-U", APP_USER]
    script = tmp_path / "bench.sql"
    script.write_text("\\set x random(1, 1000)\nselect :x::int + 1;\n")
    bench = subprocess.Popen(
        [str(pgbench), "-n", "-M", "prepared", "-c", "2", "-j", "1", "-T", "2", "-p", str(pooler.port), *common,
         "-f", str(script), APP_DB],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    refused = 0
    with psycopg.connect(pooler.dsn(), autocommit=True) as attacker:
        while bench.poll() is None:
            for name in server_names(pooler) or {"pooler_1"}:
                try:
                    attacker.execute(f"DEALLOCATE {name}")
                except psycopg.errors.ReservedName:
                    refused += 1
    out, err = bench.communicate(timeout=30)
    assert bench.returncode == 0, err
    assert re.search(r"number of failed transactions: 0 ", out), out
    assert refused > 0


def test_raw_protocol_victim_recovers_after_an_extended_deallocate(pooler: RunningPooler) -> None:
    """The attacker sends DEALLOCATE through Parse/Bind/Execute (never a simple Query): the tag still retires it."""
    with RawClient(pooler.port) as victim, RawClient(pooler.port) as attacker:
        victim.login(APP_USER, APP_PASSWORD, APP_DB)
        attacker.login(APP_USER, APP_PASSWORD, APP_DB)
        victim.send(parse("select 41 + 1", "v") + bind([], "v") + execute() + pq.SYNC_MESSAGE)
        assert "".join(m.kind for m in victim.read_until("Z")) == "12DCZ"
        name = next(iter(server_names(pooler)))
        attacker.send(parse(f"DEALLOCATE {name}") + bind([]) + execute() + pq.SYNC_MESSAGE)
        answer = "".join(m.kind for m in attacker.read_until("Z"))
        assert answer.replace("N", "") == "12CZ"  # N: the session-state warning about DEALLOCATE
        for _ in range(3):
            victim.send(bind([], "v") + execute() + pq.SYNC_MESSAGE)
            messages = victim.read_until("Z")
            assert "".join(m.kind for m in messages) == "2DCZ", messages


async def test_a_pooler_name_taken_by_a_hidden_prepare_costs_one_error_then_the_server_is_replaced(
    pooler: RunningPooler,
) -> None:
    taken = pooler.call(lambda p: f"pooler_{len(p.statements) + 1}")  # the name the next new query gets
    with psycopg.connect(pooler.dsn(), autocommit=True) as attacker:
        attacker.execute(f"select 1; PREPARE {taken} AS select 'evil'")
    victim = await asyncpg.connect(pooler.dsn())
    try:
        failures = 0
        for i in range(4):
            try:
                assert await victim.fetchval("select $1::int - 1000", i) == i - 1000
            except asyncpg.PostgresError as exc:
                assert exc.sqlstate == "42P05", exc
                failures += 1
        assert failures == 1
    finally:
        await victim.close()
