"""Session-state checks on the wire: NOTICEs in warn mode, refusals in error mode, silence elsewhere.

The analyzer itself is table-tested in test_session_state.py; these tests make sure real clients
(psycopg, asyncpg) see what the docs promise, and that nothing is lost or left dirty.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass

import asyncpg
import psycopg
import pytest
from harness import RunningPooler, make_config, running_pooler
from support import PostgresServer

from pooler.config import PoolMode
from pooler.runtime.process import Pooler

#: One statement per kind, each run in autocommit on the pooled endpoint.
EACH_KIND = {
    "set": "SET search_path = public",
    "set_config": "SELECT set_config('search_path', 'public', false)",
    "listen": "LISTEN somewhere",
    "prepare": "PREPARE p1 AS SELECT 1",
    "cursor_with_hold": "DECLARE c1 CURSOR WITH HOLD FOR SELECT 1",
    "temp_table": "CREATE TEMP TABLE t_session (x int)",
    "advisory_lock": "SELECT pg_advisory_lock(4242)",
    "load": "LOAD 'plpgsql'",
}

#: Statements that must never warn: their effect ends with the transaction, or the words are data.
HARMLESS = [
    "SELECT 1",
    "UPDATE session_checks SET a = 1 WHERE false",
    "SELECT 'SET x = 1', 'LISTEN foo' AS listen",
    "SELECT pg_advisory_xact_lock(1)",
    "SELECT set_config('application_name', 'y', true)",
    "BEGIN; SET LOCAL work_mem = '8MB'; CREATE TEMP TABLE t_local (x int) ON COMMIT DROP; COMMIT",
    "/* SET search_path = x */ SELECT 2",
    "UNLISTEN *",
    "DISCARD ALL",
    "DEALLOCATE ALL",
    "RESET ALL",
    "RESET search_path",
    "CLOSE ALL",
    "SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL;",  # asyncpg's pool reset
    "SET TIME ZONE 'UTC'",  # the pooler carries TimeZone to whichever server the client lands on
    "SELECT set_config('application_name', 'x', false)",
]


@pytest.fixture(scope="module")
def warn_pooler(postgres: PostgresServer) -> Iterator[RunningPooler]:
    with running_pooler(make_config(postgres, default_pool_size=2)) as running:  # warn is the default
        with psycopg.connect(running.dsn(direct=True), autocommit=True) as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS session_checks (a int)")
        yield running


def counts(pooler: RunningPooler) -> dict[str, int]:
    def read(p: Pooler) -> dict[str, int]:
        total: dict[str, int] = {}
        for pool in p.pools.values():
            for kind, n in pool.stats.session_state.items():
                total[kind] = total.get(kind, 0) + n
        return total

    return pooler.call(read)


@dataclass(frozen=True)
class Notice:
    sqlstate: str | None
    severity: str | None
    message_primary: str | None
    message_hint: str | None


def notices_of(conn: psycopg.Connection[object]) -> list[Notice]:
    """Notices as they arrive (psycopg's Diagnostic is only readable inside the handler)."""
    seen: list[Notice] = []
    conn.add_notice_handler(
        lambda d: seen.append(Notice(d.sqlstate, d.severity, d.message_primary, d.message_hint)))
    return seen


@pytest.mark.parametrize(("kind", "sql"), EACH_KIND.items())
def test_warn_mode_runs_the_statement_and_sends_one_warning(warn_pooler: RunningPooler, kind: str, sql: str) -> None:
    before = counts(warn_pooler).get(kind, 0)
    with psycopg.connect(warn_pooler.dsn(), autocommit=True) as conn:
        seen = notices_of(conn)
        for statement in (sql, sql.replace("p1", "p2").replace("c1", "c2").replace("t_session", "t_session2")):
            if kind == "load":  # only a superuser may LOAD: Postgres refuses it, the warning came first anyway
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    conn.execute(statement)
            else:
                conn.execute(statement)  # it runs: warn mode never breaks the app
        warnings = [n for n in seen if n.sqlstate == "01000"]
        assert len(warnings) == 1, [n.message_primary for n in seen]  # once per kind per connection
        assert "does not survive transaction pooling" in (warnings[0].message_primary or "")
        assert warnings[0].severity == "WARNING"
        assert warnings[0].message_hint
        if kind == "advisory_lock":
            conn.execute("SELECT pg_advisory_unlock_all()")
    assert counts(warn_pooler).get(kind, 0) == before + 2  # the counter counts every occurrence


@pytest.mark.parametrize("sql", HARMLESS)
def test_harmless_statements_do_not_warn(warn_pooler: RunningPooler, sql: str) -> None:
    with psycopg.connect(warn_pooler.dsn(), autocommit=True) as conn:
        seen = notices_of(conn)
        conn.execute(sql)
        assert not [n for n in seen if n.sqlstate == "01000"], [n.message_primary for n in seen]


def test_set_then_reset_is_one_warning_and_reset_alone_none(warn_pooler: RunningPooler) -> None:
    """The per-kind decision for clearing statements (docs/session-state.md): the SET warns, the RESET that
    follows it adds nothing (it cannot undo a SET made on another server connection, and the SET's warning
    already says so); a RESET on its own, like a driver's pool reset, is housekeeping."""
    before = counts(warn_pooler).get("set", 0)
    with psycopg.connect(warn_pooler.dsn(), autocommit=True) as conn:
        seen = notices_of(conn)
        conn.execute("SET search_path = public")
        conn.execute("RESET search_path")
        assert [n.message_primary for n in seen if n.sqlstate == "01000"] == [
            "SET does not survive transaction pooling: the next transaction may run on another server connection, "
            "which does not have this setting, while this one keeps it for the next client"]
    with psycopg.connect(warn_pooler.dsn(), autocommit=True) as conn:
        seen = notices_of(conn)
        conn.execute("RESET search_path")
        conn.execute("RESET ALL")
        assert not [n for n in seen if n.sqlstate == "01000"]
    assert counts(warn_pooler).get("set", 0) == before + 1


def test_the_hint_names_the_fix(warn_pooler: RunningPooler) -> None:
    with psycopg.connect(warn_pooler.dsn(), autocommit=True) as conn:
        seen = notices_of(conn)
        conn.execute("SET search_path = public")
        assert "SET LOCAL" in (seen[0].message_hint or "")


async def test_asyncpg_receives_the_warning_for_a_prepared_statement(warn_pooler: RunningPooler) -> None:
    conn = await asyncpg.connect(warn_pooler.dsn())  # extended protocol, named statements
    try:
        messages: list[str] = []
        conn.add_log_listener(lambda _conn, message: messages.append(str(message)))
        await conn.execute("SELECT pg_advisory_lock(77)")  # no arguments: simple protocol
        await conn.fetchval("SELECT pg_advisory_lock($1::bigint)", 78)  # with one: Parse/Bind/Execute
        await conn.execute("SELECT pg_advisory_unlock_all()")
        for _ in range(50):
            if messages:
                break
            await asyncio.sleep(0.01)
        assert len([m for m in messages if "does not survive transaction pooling" in m]) == 1
    finally:
        await conn.close()


def test_direct_endpoint_and_session_mode_never_warn(postgres: PostgresServer) -> None:
    with running_pooler(make_config(postgres, pool_mode=PoolMode.SESSION)) as pooler:
        for dsn in (pooler.dsn(), pooler.dsn(direct=True)):
            with psycopg.connect(dsn, autocommit=True) as conn:
                seen = notices_of(conn)
                conn.execute("SET search_path = public")
                conn.execute("LISTEN x")
                assert not seen


def test_off_mode_is_silent(postgres: PostgresServer) -> None:
    with running_pooler(make_config(postgres, session_state_check="off")) as pooler:
        with psycopg.connect(pooler.dsn(), autocommit=True) as conn:
            seen = notices_of(conn)
            conn.execute("SET search_path = public")
            assert not seen
        assert counts(pooler) == {}


@pytest.fixture(scope="module")
def error_pooler(postgres: PostgresServer) -> Iterator[RunningPooler]:
    with running_pooler(make_config(postgres, default_pool_size=1, session_state_check="error")) as running:
        yield running


@pytest.mark.parametrize(("kind", "sql"), EACH_KIND.items())
def test_error_mode_refuses_each_kind_with_0a000(error_pooler: RunningPooler, kind: str, sql: str) -> None:
    with psycopg.connect(error_pooler.dsn(), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.FeatureNotSupported) as refused:
            conn.execute(sql)
        assert "does not survive transaction pooling" in str(refused.value)
        assert refused.value.diag.message_hint
        assert conn.execute("SELECT 1").fetchone() == (1,)  # the connection goes on
        # Nothing of the refused statement reached the server: its session is as clean as before.
        assert conn.execute("SELECT count(*) FROM pg_prepared_statements WHERE name = 'p1'").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM pg_cursors").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'").fetchone() == (0,)
        assert conn.execute("SELECT current_setting('search_path')").fetchone() != ("public",)


def test_error_mode_inside_a_transaction_leaves_it_failed_like_postgres(error_pooler: RunningPooler) -> None:
    with psycopg.connect(error_pooler.dsn()) as conn:
        conn.execute("SELECT 1")
        with pytest.raises(psycopg.errors.FeatureNotSupported):
            conn.execute("LISTEN nope")
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR
        with pytest.raises(psycopg.errors.InFailedSqlTransaction):
            conn.execute("SELECT 1")
        conn.rollback()
        assert conn.execute("SELECT 2").fetchone() == (2,)


async def test_error_mode_refuses_a_parse_in_the_extended_protocol(error_pooler: RunningPooler) -> None:
    conn = await asyncpg.connect(error_pooler.dsn())
    try:
        with pytest.raises(asyncpg.FeatureNotSupportedError, match="does not survive transaction pooling"):
            await conn.fetchval("SELECT pg_advisory_lock($1::bigint)", 5)
        assert await conn.fetchval("SELECT $1::int + 1", 1) == 2  # the pipeline goes on after the refusal
        assert await conn.fetchval("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'") == 0
    finally:
        await conn.close()
