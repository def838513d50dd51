"""The session-state analyzer: which SQL leaves state that transaction pooling loses or leaks.

Pure unit tests, no server. Two tables carry most of it: POSITIVES (SQL that must be flagged, with the
kinds and labels expected) and NEGATIVES (SQL that must not be, chiefly the trigger words where they
are not statements: literals, identifiers, comments, dollar quotes, UPDATE … SET). Then the machinery
that keeps it cheap: the trigger-word filter and the single-DML shortcut never change a verdict (checked
against the parser on every entry of both tables), and the LRU cache answers repeats without parsing
and stays bounded.

Measured cost (``python -m benchmarks.session_state_cost``; see that file for the numbers and why).
"""

from __future__ import annotations

import itertools

import pytest
from pglast.parser import parse_sql_json

from pooler.core.session_state import MAX_CACHED_SQL, Finding, SessionStateChecker, SessionStateKind

K = SessionStateKind


class SpyParse:
    """The real parse step, counting its calls: how the tests see whether a check reached the parser."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def __call__(self, sql: str) -> str:
        self.calls.append(sql)
        return parse_sql_json(sql)


def checker(cache_size: int = 4096) -> tuple[SessionStateChecker, SpyParse]:
    spy = SpyParse()
    return SessionStateChecker(cache_size, parse=spy), spy


# (sql, in_transaction, expected (kind, statement label) pairs in order)
POSITIVES: list[tuple[str, bool, list[tuple[SessionStateKind, str]]]] = [
    # set
    ("SET search_path = app, public", False, [(K.SET, "SET")]),
    ("set work_mem to '64MB'", False, [(K.SET, "SET")]),
    ("SET SESSION statement_timeout = 0", False, [(K.SET, "SET")]),
    ("SET app.user_id = '42'", True, [(K.SET, "SET")]),  # in a transaction too: a plain SET outlives COMMIT
    ("SET search_path = $1", False, [(K.SET, "SET")]),  # a placeholder in a Parse message
    ("SET work_mem FROM CURRENT", False, [(K.SET, "SET")]),
    ("SET local = 1", False, [(K.SET, "SET")]),  # a GUC named "local", not SET LOCAL
    ("SET ROLE reporting", False, [(K.SET, "SET ROLE")]),
    ("SET ROLE NONE", False, [(K.SET, "SET ROLE")]),
    ("SET SESSION AUTHORIZATION bob", False, [(K.SET, "SET SESSION AUTHORIZATION")]),
    ("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY", False, [(K.SET, "SET SESSION CHARACTERISTICS")]),
    ("SET IntervalStyle = 'iso_8601'", False, [(K.SET, "SET")]),  # track_extra_parameters: not known here
    # making state, then clearing it: one finding, the SET's (RESET cannot undo a SET made elsewhere)
    ("SET search_path = x; RESET search_path", False, [(K.SET, "SET")]),
    ("SET ROLE reporting; RESET ROLE", False, [(K.SET, "SET ROLE")]),
    ("  \n\tSeT    search_path\n=\nx  ", False, [(K.SET, "SET")]),
    ("/* migrations */ SET lock_timeout = '5s'", False, [(K.SET, "SET")]),
    ("-- comment first\nSET lock_timeout = '5s';", False, [(K.SET, "SET")]),
    ("BEGIN; SET search_path = x; COMMIT", False, [(K.SET, "SET")]),
    # set_config
    ("SELECT set_config('a.b', 'c', false)", False, [(K.SET_CONFIG, "set_config()")]),
    ("SELECT set_config('search_path', 'x', false)", False, [(K.SET_CONFIG, "set_config()")]),
    ("SELECT set_config($1, 'x', false)", False, [(K.SET_CONFIG, "set_config()")]),  # which one: unknown
    ("select pg_catalog.set_config('a.b', 'c', FALSE)", False, [(K.SET_CONFIG, "set_config()")]),
    ("SELECT set_config('a.b', 'c', 'off')", False, [(K.SET_CONFIG, "set_config()")]),
    ("SELECT set_config('a.b', 'c', 'f'::boolean)", False, [(K.SET_CONFIG, "set_config()")]),
    ("SELECT set_config('a.b', 'c', NULL)", False, [(K.SET_CONFIG, "set_config()")]),  # NULL means false
    ("SELECT set_config('a.b', 'c', $1)", False, [(K.SET_CONFIG, "set_config()")]),  # may be session-level
    ("SELECT set_config('a.b', 'c', x) FROM t", True, [(K.SET_CONFIG, "set_config()")]),
    ("UPDATE t SET a = 1 WHERE set_config('a.b', 'c', false) IS NOT NULL", False, [(K.SET_CONFIG, "set_config()")]),
    # listen
    ("LISTEN jobs", False, [(K.LISTEN, "LISTEN")]),
    ('listen "Mixed Case"', True, [(K.LISTEN, "LISTEN")]),
    # prepare
    ("PREPARE q(int) AS SELECT $1", False, [(K.PREPARE, "PREPARE")]),
    ("EXECUTE q(1)", False, [(K.PREPARE, "EXECUTE")]),
    ("DEALLOCATE q", False, [(K.PREPARE, "DEALLOCATE")]),
    ("CREATE TABLE snapshot AS EXECUTE q(1)", False, [(K.PREPARE, "EXECUTE")]),
    ("EXPLAIN EXECUTE q(1)", False, [(K.PREPARE, "EXECUTE")]),
    # cursor_with_hold
    ("DECLARE c CURSOR WITH HOLD FOR SELECT * FROM t", False, [(K.CURSOR_WITH_HOLD, "DECLARE … WITH HOLD")]),
    ("declare c binary no scroll cursor with hold for select 1", True, [(K.CURSOR_WITH_HOLD, "DECLARE … WITH HOLD")]),
    # temp_table
    ("CREATE TEMP TABLE t (a int)", False, [(K.TEMP_TABLE, "CREATE TEMP TABLE")]),
    ("CREATE TEMPORARY TABLE IF NOT EXISTS t (a int)", True, [(K.TEMP_TABLE, "CREATE TEMP TABLE")]),
    ("CREATE LOCAL TEMP TABLE t (a int) ON COMMIT DELETE ROWS", True, [(K.TEMP_TABLE, "CREATE TEMP TABLE")]),
    ("CREATE TEMP TABLE t (a int) ON COMMIT PRESERVE ROWS", True, [(K.TEMP_TABLE, "CREATE TEMP TABLE")]),
    ("CREATE TABLE pg_temp.t (a int)", False, [(K.TEMP_TABLE, "CREATE TEMP TABLE")]),
    # ON COMMIT DROP alone, outside a transaction: dropped as soon as it is created
    ("CREATE TEMP TABLE t (a int) ON COMMIT DROP", False, [(K.TEMP_TABLE, "CREATE TEMP TABLE … ON COMMIT DROP")]),
    ("CREATE TEMP TABLE t AS SELECT 1 AS a", False, [(K.TEMP_TABLE, "CREATE TEMP TABLE … AS")]),
    ("CREATE TEMP TABLE t ON COMMIT DROP AS SELECT 1", False,
     [(K.TEMP_TABLE, "CREATE TEMP TABLE … ON COMMIT DROP")]),
    ("SELECT * INTO TEMP t FROM accounts", False, [(K.TEMP_TABLE, "SELECT … INTO TEMP")]),
    ("select 1 as a into temporary table t", True, [(K.TEMP_TABLE, "SELECT … INTO TEMP")]),
    ("WITH x AS (SELECT 1) SELECT * INTO TEMP t FROM x", False, [(K.TEMP_TABLE, "SELECT … INTO TEMP")]),
    ("CREATE TEMP VIEW v AS SELECT 1", False, [(K.TEMP_TABLE, "CREATE TEMP VIEW")]),
    ("CREATE TEMP SEQUENCE s", True, [(K.TEMP_TABLE, "CREATE TEMP SEQUENCE")]),
    ("EXPLAIN ANALYZE SELECT 1 INTO TEMP t", False, [(K.TEMP_TABLE, "SELECT … INTO TEMP")]),
    # advisory_lock, anywhere an expression runs
    ("SELECT pg_advisory_lock(42)", False, [(K.ADVISORY_LOCK, "pg_advisory_lock()")]),
    ("SELECT pg_advisory_lock_shared(1, 2)", True, [(K.ADVISORY_LOCK, "pg_advisory_lock_shared()")]),
    ("SELECT pg_try_advisory_lock(hashtext($1))", False, [(K.ADVISORY_LOCK, "pg_try_advisory_lock()")]),
    ('SELECT "pg_advisory_lock"(1)', False, [(K.ADVISORY_LOCK, "pg_advisory_lock()")]),  # same identifier
    ("select PG_CATALOG.PG_TRY_ADVISORY_LOCK_SHARED(7)", False, [(K.ADVISORY_LOCK, "pg_try_advisory_lock_shared()")]),
    ("SELECT id FROM jobs WHERE pg_try_advisory_lock(id) LIMIT 1", False,
     [(K.ADVISORY_LOCK, "pg_try_advisory_lock()")]),
    ("SELECT coalesce(pg_advisory_lock(1)::text, 'x')", False, [(K.ADVISORY_LOCK, "pg_advisory_lock()")]),
    ("SELECT * FROM t WHERE id IN (SELECT id FROM u WHERE pg_try_advisory_lock(u.id))", False,
     [(K.ADVISORY_LOCK, "pg_try_advisory_lock()")]),
    ("WITH l AS (SELECT pg_advisory_lock(1)) UPDATE t SET a = 1", False, [(K.ADVISORY_LOCK, "pg_advisory_lock()")]),
    ("INSERT INTO t VALUES (pg_try_advisory_lock(1))", False, [(K.ADVISORY_LOCK, "pg_try_advisory_lock()")]),
    ("DELETE FROM t WHERE pg_try_advisory_lock(id)", False, [(K.ADVISORY_LOCK, "pg_try_advisory_lock()")]),
    ("CALL do_work(pg_try_advisory_lock(1))", False, [(K.ADVISORY_LOCK, "pg_try_advisory_lock()")]),
    ("COPY (SELECT pg_advisory_lock(1)) TO STDOUT", False, [(K.ADVISORY_LOCK, "pg_advisory_lock()")]),
    ("EXPLAIN (ANALYZE) SELECT pg_advisory_lock(1)", False, [(K.ADVISORY_LOCK, "pg_advisory_lock()")]),
    ("SELECT pg_advisory_lock(1), pg_try_advisory_lock_shared(2), pg_advisory_lock(3)", False,
     [(K.ADVISORY_LOCK, "pg_advisory_lock()"), (K.ADVISORY_LOCK, "pg_try_advisory_lock_shared()")]),
    # load
    ("LOAD 'auto_explain'", False, [(K.LOAD, "LOAD")]),
    # several statements and kinds in one string, in order, without repeats
    ("SET a.b = 1; LISTEN x; SET a.c = 2; SELECT pg_advisory_lock(1)", False,
     [(K.SET, "SET"), (K.LISTEN, "LISTEN"), (K.ADVISORY_LOCK, "pg_advisory_lock()")]),
    ("BEGIN; CREATE TEMP TABLE t (a int); DECLARE c CURSOR WITH HOLD FOR SELECT 1; COMMIT", False,
     [(K.TEMP_TABLE, "CREATE TEMP TABLE"), (K.CURSOR_WITH_HOLD, "DECLARE … WITH HOLD")]),
    ("DECLARE c CURSOR WITH HOLD FOR SELECT pg_advisory_lock(1)", True,
     [(K.CURSOR_WITH_HOLD, "DECLARE … WITH HOLD"), (K.ADVISORY_LOCK, "pg_advisory_lock()")]),
]

# (sql, in_transaction): must give ()
NEGATIVES: list[tuple[str, bool]] = [
    # transaction-scoped forms
    ("SET LOCAL search_path = app", True),
    ("set local statement_timeout = '1s'", True),
    ("SET LOCAL ROLE reporting", True),
    ("SET LOCAL SESSION AUTHORIZATION bob", True),
    ("SET LOCAL TIME ZONE 'UTC'", True),
    ("SET LOCAL search_path = x", False),  # outside a transaction Postgres ignores it (with a WARNING)
    ("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", True),
    ("SET TRANSACTION READ ONLY, DEFERRABLE", True),
    ("SET TRANSACTION SNAPSHOT '00000003-0000001B-1'", True),
    ("SET transaction_isolation = 'repeatable read'", True),
    ("SET CONSTRAINTS ALL DEFERRED", True),
    ("BEGIN; SET LOCAL a.b = 1; SELECT 1; COMMIT", False),
    ("SELECT set_config('a.b', 'c', true)", True),
    ("SELECT set_config('a.b', 'c', TRUE), set_config('x.y', 'z', 'on')", True),
    ("SELECT set_config('a.b', 'c', 't'::bool)", True),
    ("SELECT set_config('a.b', $1, 'yes')", True),
    ("SELECT myschema.set_config('a', 'b', false)", False),  # not pg_catalog's
    # temp tables that die with their transaction
    ("CREATE TEMP TABLE t (a int) ON COMMIT DROP", True),
    ("CREATE TEMP TABLE t ON COMMIT DROP AS SELECT 1", True),
    ("BEGIN; CREATE TEMP TABLE t (a int) ON COMMIT DROP; INSERT INTO t VALUES (1); COMMIT", False),
    ("BEGIN ISOLATION LEVEL SERIALIZABLE; CREATE TEMPORARY TABLE t (a int) ON COMMIT DROP", False),
    # a multi-statement Query runs in one implicit transaction that ends with the message
    ("CREATE TEMP TABLE t (a int) ON COMMIT DROP; INSERT INTO t VALUES (1); SELECT * FROM t", False),
    # advisory locks that are not session-level
    ("SELECT pg_advisory_xact_lock(42)", True),
    ("SELECT pg_try_advisory_xact_lock(1), pg_advisory_xact_lock_shared(2), pg_try_advisory_xact_lock_shared(3)",
     True),
    ("SELECT pg_advisory_unlock(42)", False),
    ("SELECT pg_advisory_unlock_shared(1), pg_advisory_unlock_all()", False),
    ("SELECT myschema.pg_advisory_lock(1)", False),
    ("EXPLAIN SELECT pg_advisory_lock(1)", False),  # planned, not run
    ("EXPLAIN (ANALYZE false) SELECT pg_advisory_lock(1)", False),
    ("CREATE VIEW v AS SELECT pg_advisory_lock(1)", False),  # a definition, nothing runs now
    ("CREATE FUNCTION f() RETURNS void LANGUAGE sql BEGIN ATOMIC SELECT pg_advisory_lock(1); END", False),
    ("CREATE FUNCTION f() RETURNS int LANGUAGE sql SET search_path = pg_temp AS 'SELECT 1'", False),
    ("ALTER ROLE app SET search_path = x", False),
    ("ALTER DATABASE app SET work_mem = '8MB'", False),
    ("ALTER SYSTEM SET work_mem = '8MB'", False),
    # the words where they are not statements
    ("UPDATE t SET a = 1", False),
    ("UPDATE pgbench_accounts SET abalance = abalance + 1234 WHERE aid = 5678;", False),
    ("update t set a = 'x;y' where b = 2", False),  # ';' in a literal: goes to the parser, still nothing
    ("INSERT INTO t (a) VALUES (1) ON CONFLICT (a) DO UPDATE SET a = excluded.a", False),
    ("SELECT 'SET x = 1'", False),
    ("SELECT 'pg_advisory_lock(1)', 'LISTEN x; LOAD ''y''' FROM t", False),
    ('SELECT "set", "listen", "temp", "load" FROM t', False),
    ('SELECT "PG_ADVISORY_LOCK"(1)', False),  # quoted upper case: another function than pg_catalog's
    ("SELECT listen, prepare, execute, declare, temp, advisory FROM settings", False),
    ("SELECT 1 -- SET search_path = x", False),
    ("SELECT /* LISTEN x; SET y = 1 */ 1", False),
    ("SELECT $$SET role x; LISTEN y$$, $tag$CREATE TEMP TABLE z()$tag$", False),
    ("SELECT * FROM offsets OFFSET 10", False),
    ("SELECT * FROM templates WHERE payload_loaded", False),
    ("SELECT * INTO archive FROM t", False),  # SELECT INTO a regular table
    ("CREATE TABLE t AS SELECT 1", False),
    ("CREATE TABLE templates (a int)", False),
    # parameters the pooler carries from server to server for each client (ParameterStatus)
    ("SET TIME ZONE 'UTC'", False),
    ("SET timezone TO DEFAULT", False),
    ('SET "TimeZone" = \'Europe/Paris\'', False),
    ("SET NAMES 'UTF8'", False),
    ("SET client_encoding = 'LATIN1'", False),
    ("SET DateStyle = ISO, MDY", False),
    ("SET application_name = 'worker'", False),
    ("SET standard_conforming_strings = on", False),
    ("SELECT set_config('TimeZone', 'UTC', false)", False),  # Django with psycopg 3
    ("SELECT pg_catalog.set_config('application_name', $1, false)", False),
    # housekeeping: back to a fresh connection's state, what drivers and pools send on reuse
    ("RESET search_path", False),
    ("RESET ROLE", False),
    ("RESET SESSION AUTHORIZATION", False),
    ("RESET ALL", False),
    ("DEALLOCATE ALL", False),
    ("DEALLOCATE PREPARE ALL", False),
    ("CLOSE ALL", False),
    ("SELECT pg_advisory_unlock_all();\nCLOSE ALL;\nUNLISTEN *;\nRESET ALL;", False),  # asyncpg's pool reset
    ("DISCARD PLANS", False),
    ("DISCARD SEQUENCES", False),
    # harmless statements
    ("UNLISTEN *", False),
    ("UNLISTEN jobs", False),
    ("NOTIFY jobs, 'payload'", False),
    ("DISCARD ALL", False),
    ("DISCARD TEMP", False),
    ("DECLARE c CURSOR FOR SELECT 1", True),
    ("DECLARE c CURSOR WITHOUT HOLD FOR SELECT 1", True),
    ("PREPARE TRANSACTION 'tx1'", True),
    ("SHOW search_path", False),
    # PL/pgSQL is opaque to the SQL grammar: DO bodies are not looked into (documented)
    ("DO $$ BEGIN PERFORM pg_advisory_lock(1); SET search_path = x; END $$", False),
    # unparsable: Postgres reports the error, we say nothing
    ("SET search_path =", False),
    ("LISTEN", False),
    ("SELECT FROM WHERE set", False),
    ("SELECT $1 FROM $2 WHERE set = 1", False),
    ("SELECT 'set \udcff'", False),  # a lone surrogate the parser cannot encode
    ("", False),
    (" ; ", False),
]


def _expected_ids() -> list[str]:
    return [sql[:60] for sql, _, _ in POSITIVES]


@pytest.mark.parametrize(("sql", "in_transaction", "expected"), POSITIVES, ids=_expected_ids())
def test_flagged(sql: str, in_transaction: bool, expected: list[tuple[SessionStateKind, str]]) -> None:
    findings = SessionStateChecker().check(sql, in_transaction)
    assert [(f.kind, f.statement) for f in findings] == expected


@pytest.mark.parametrize(("sql", "in_transaction"), NEGATIVES, ids=[sql[:60] for sql, _ in NEGATIVES])
def test_not_flagged(sql: str, in_transaction: bool) -> None:
    assert SessionStateChecker().check(sql, in_transaction) == ()


def test_every_kind_is_covered_by_the_positives() -> None:
    assert {kind for _, _, expected in POSITIVES for kind, _ in expected} == set(SessionStateKind)


def test_kind_values_are_stable_label_values() -> None:
    """Prometheus labels and log keys: renaming one breaks dashboards, so the exact set is pinned."""
    assert [k.value for k in SessionStateKind] == [
        "set", "set_config", "listen", "prepare", "cursor_with_hold", "temp_table", "advisory_lock", "load",
    ]
    assert str(SessionStateKind.TEMP_TABLE) == "temp_table"
    assert f"{SessionStateKind.ADVISORY_LOCK}" == "advisory_lock"


def test_temp_table_with_on_commit_drop_depends_on_the_transaction() -> None:
    sql = "CREATE TEMP TABLE t (a int) ON COMMIT DROP"
    c = SessionStateChecker()
    assert c.check(sql, in_transaction=True) == ()
    (finding,) = c.check(sql, in_transaction=False)
    assert finding.kind is K.TEMP_TABLE
    assert "BEGIN" in finding.fix
    # the same text answers by its own in_transaction, from the cache too
    assert c.check(sql, in_transaction=True) == ()
    assert c.check(sql, in_transaction=False) == (finding,)


def test_findings_are_worded_for_the_notice() -> None:
    """The data path sends "<statement> does not survive transaction pooling: <why>" and hints <fix>."""
    sqls = [sql for sql, _, _ in POSITIVES]
    c = SessionStateChecker()
    findings = {f for sql, tx, _ in POSITIVES for f in c.check(sql, tx)}
    assert len(findings) >= len(SessionStateKind)
    for f in findings:
        assert isinstance(f, Finding)
        assert f.statement and f.why and f.fix
        assert f.why[0].islower() and not f.why.endswith("."), f.why
        assert f.fix[0].isupper() and f.fix.endswith("."), f.fix
        assert "\n" not in f.why + f.fix
    (set_finding,) = c.check(sqls[0], False)
    message = f"{set_finding.statement} does not survive transaction pooling: {set_finding.why}"
    assert message.startswith("SET does not survive transaction pooling: the next transaction may run on another")
    assert "SET LOCAL" in set_finding.fix
    (lock,) = c.check("SELECT pg_try_advisory_lock_shared(1)", False)
    assert "pg_try_advisory_xact_lock_shared()" in lock.fix


def test_findings_are_frozen() -> None:
    (f,) = SessionStateChecker().check("LISTEN x", False)
    with pytest.raises(AttributeError):
        f.why = "changed"  # type: ignore[misc]


# --- the pre-filter and the single-DML shortcut -------------------------------------------------------


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT abalance FROM pgbench_accounts WHERE aid = $1",
        "SELECT abalance FROM pgbench_accounts WHERE aid = 4242;",
        'SELECT "users"."id", "users"."email" FROM "users" WHERE "users"."id" = $1 LIMIT $2',
        "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (1, 2, 3, 4, CURRENT_TIMESTAMP)",
        "BEGIN",
        "COMMIT",
        "",
    ],
)
def test_query_without_trigger_words_never_reaches_the_parser(sql: str) -> None:
    c, spy = checker()
    for in_transaction in (False, True, False):
        assert c.check(sql, in_transaction) == ()
    assert spy.calls == []


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE pgbench_accounts SET abalance = abalance + 1234 WHERE aid = 5678;",
        "update t set a = 1 ;; \n",
        "WITH x AS (SELECT 1) UPDATE t SET a = 1 FROM x",
        "SELECT * FROM t ORDER BY a OFFSET $1",
        "SELECT load_date FROM datasets",
        "DELETE FROM settings WHERE key = 'execute'",
        "MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN UPDATE SET a = s.a",
    ],
)
def test_single_dml_statement_skips_the_parser(sql: str) -> None:
    """UPDATE … SET with inlined values is new text every time: it must not cost a parse (or a cache slot)."""
    c, spy = checker()
    assert c.check(sql, False) == ()
    assert spy.calls == []


@pytest.mark.parametrize(
    "sql",
    [
        "/* leading comment */ UPDATE t SET a = 1",  # not recognisably DML from its first word
        "UPDATE t SET a = 'x;y'",  # a ';' that is not at the end
        "UPDATE t SET a = 1; SET role x",  # a second statement
        "UPDATE t SET a = 1 WHERE pg_try_advisory_lock(1)",  # a function we look for
        "SELECT set_config('a', 'b', true)",
        "SELECT * FROM temperatures",  # 'temp' may be SELECT … INTO TEMP: only the parser can tell
    ],
)
def test_anything_else_with_a_trigger_word_is_parsed(sql: str) -> None:
    c, spy = checker()
    c.check(sql, False)
    assert spy.calls == [sql]


@pytest.mark.parametrize(
    "word", ["set", "reset", "set_config", "listen", "prepare", "execute", "deallocate", "declare", "temp",
             "temporary", "advisory", "load"],
)
def test_each_trigger_word_reaches_the_parser(word: str) -> None:
    for sql in (f"CALL {word}()", f"CALL {word.upper()}()"):
        c, spy = checker()
        c.check(sql, False)
        assert spy.calls == [sql]


@pytest.mark.parametrize(
    ("sql", "in_transaction"),
    [(sql, tx) for sql, tx, _ in POSITIVES] + NEGATIVES,
    ids=[sql[:60] for sql, _, _ in POSITIVES] + [sql[:60] for sql, _ in NEGATIVES],
)
def test_shortcuts_never_change_the_verdict(sql: str, in_transaction: bool) -> None:
    """The filter and the DML shortcut only skip work: the parser, asked directly, agrees every time."""
    c = SessionStateChecker(cache_size=0)
    assert c.check(sql, in_transaction) == c._analyze(sql, sql.lower(), in_transaction)


# --- the cache ---------------------------------------------------------------------------------------


def test_repeated_query_is_answered_from_the_cache() -> None:
    c, spy = checker()
    first = c.check("SET search_path = app", False)
    second = c.check("SET search_path = app", False)
    assert second == first and second[0].kind is K.SET
    assert len(spy.calls) == 1
    c.check("SET search_path = app", True)  # in_transaction is part of the key
    assert len(spy.calls) == 2
    c.check("CREATE TABLE settings (a int)", False)  # an empty verdict is cached too
    c.check("CREATE TABLE settings (a int)", False)
    assert len(spy.calls) == 3


def test_cache_is_a_bounded_lru() -> None:
    c, spy = checker(cache_size=3)
    queries = [f"SET a.v{i} = 1" for i in range(5)]
    for sql in queries[:3]:
        c.check(sql, False)
    c.check(queries[0], False)  # touch 0: now 1 is the least recently used
    c.check(queries[3], False)  # evicts 1
    c.check(queries[4], False)  # evicts 2
    assert len(c._cache) == 3
    spy.calls.clear()
    for sql in (queries[0], queries[3], queries[4]):
        c.check(sql, False)
    assert spy.calls == []
    c.check(queries[1], False)
    c.check(queries[2], False)
    assert spy.calls == [queries[1], queries[2]]
    assert len(c._cache) == 3


def test_cache_stays_bounded_under_unique_text() -> None:
    c, _ = checker(cache_size=100)
    for i in range(1000):
        c.check(f"SET LOCAL app.request_id = '{i}'", True)
    assert len(c._cache) == 100


def test_cache_size_zero_disables_the_cache() -> None:
    c, spy = checker(cache_size=0)
    c.check("LISTEN x", False)
    c.check("LISTEN x", False)
    assert len(spy.calls) == 2
    assert len(c._cache) == 0
    with pytest.raises(ValueError, match="cache_size"):
        SessionStateChecker(cache_size=-1)


def test_long_text_is_analysed_but_not_cached() -> None:
    c, spy = checker()
    long_sql = "SET search_path = '" + "x" * MAX_CACHED_SQL + "'"
    assert c.check(long_sql, False)[0].kind is K.SET
    assert c.check(long_sql, False)[0].kind is K.SET
    assert len(spy.calls) == 2
    assert len(c._cache) == 0


# --- never raises ------------------------------------------------------------------------------------


def test_broken_sql_never_raises() -> None:
    """Every prefix of every positive (mostly syntax errors), plus odd bytes: () or findings, never an error."""
    c = SessionStateChecker(cache_size=64)
    samples = [sql for sql, _, _ in POSITIVES] + ["SET x = '\x00'", "SELECT pg_advisory_lock(" + "1+" * 5000 + "1)"]
    for sql, in_transaction in itertools.product(samples, (False, True)):
        for end in range(0, len(sql) + 1, max(1, len(sql) // 25)):
            result = c.check(sql[:end], in_transaction)
            assert isinstance(result, tuple)


def test_parser_failure_gives_no_verdict() -> None:
    def garbage(sql: str) -> str:
        return "{not json"

    assert SessionStateChecker(parse=garbage).check("SET x = 1", False) == ()
