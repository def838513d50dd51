"""The client→server data path of a pooled client, end to end (pooler.net.client): the query protocol, bad
input after login, tracked parameters, psql. Real pooler, real Postgres, real clients (psycopg 3, asyncpg,
psql in a subprocess, and ``rawclient.RawClient`` for what no driver would send). The login is tested in
test_login.py.

Poolers start in milliseconds, so a test that needs special settings starts its own; the ``pooler``
fixture (transaction mode, two servers for many clients) is shared by the rest of the module.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import struct
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import psycopg
import pytest
from clienthelp import (
    assert_serving,
    connect,
    kinds,
    unique,
    wait_until,
)
from harness import RunningPooler, make_config, running_pooler
from psycopg import errors as pg_errors
from rawclient import (
    FLUSH_MESSAGE,
    RawClient,
    bind,
    data_row_values,
    describe_portal,
    describe_statement,
    execute,
    function_call,
    parse,
)
from support import APP_DB, APP_PASSWORD, APP_USER, PostgresServer

from pooler.wire import messages as pq


@pytest.fixture(scope="module")
def pooler(postgres: PostgresServer) -> Iterator[RunningPooler]:
    """Transaction pooling with two servers per pool: most tests run more clients than that."""
    with running_pooler(make_config(postgres, default_pool_size=2)) as p:
        yield p


@pytest.fixture
def table(postgres: PostgresServer) -> Iterator[str]:
    """A fresh table in appdb owned by the app user (a real one: temp tables do not survive pooling)."""
    name = unique("t")
    with psycopg.connect(postgres.dsn(APP_DB, APP_USER, APP_PASSWORD), autocommit=True) as conn:
        conn.execute(f"create table {name} (id int, payload text)")
    yield name
    with psycopg.connect(postgres.dsn(APP_DB, APP_USER, APP_PASSWORD), autocommit=True) as conn:
        conn.execute(f"drop table if exists {name}")


# ==================================================================================================
# 1. Bad input after login
# ==================================================================================================


@pytest.mark.parametrize("in_transaction", [False, True], ids=["idle", "in-transaction"])
def test_message_length_below_four_after_login(pooler: RunningPooler, in_transaction: bool) -> None:
    with RawClient(pooler.port) as raw:
        raw.login(APP_USER, APP_PASSWORD, APP_DB)
        if in_transaction:
            assert raw.simple_query("begin")[-1].payload == b"T"
        raw.send(b"Q\x00\x00\x00\x02")
        fields = raw.expect_fatal()
    assert (fields["C"], fields["M"]) == ("08P01", "invalid message length 2 for message type 'Q'")
    # The server went back clean (rolled back if needed): nobody inherits the transaction.
    wait_until(lambda: pooler.pool_stat()["idle"] == pooler.pool_stat()["servers"], what="the server to be released")
    statuses = pooler.call(lambda pl: {chr(s.ledger.tx_status) for s in pl.pools[(APP_DB, APP_USER)].servers})
    assert statuses == {"I"}
    with connect(pooler.dsn()) as conn:
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        assert conn.execute("select now() = statement_timestamp()").fetchone() == (True,)


def test_message_larger_than_max_packet_size(postgres: PostgresServer) -> None:
    with running_pooler(make_config(postgres, max_packet_size=2048)) as p:
        with connect(p.dsn()) as conn:
            assert conn.execute("select length(%s)", ["y" * 1500]).fetchone() == (1500,)
        with RawClient(p.port) as raw:
            raw.login(APP_USER, APP_PASSWORD, APP_DB)
            raw.send(pq.query("select '" + "x" * 4000 + "'"))
            fields = raw.expect_fatal()
        assert fields["C"] == "08P01"
        assert "max_packet_size (2048)" in fields["M"]
        with connect(p.dsn()) as conn, pytest.raises(psycopg.OperationalError, match="max_packet_size"):
            conn.execute("select %s::text", ["x" * 4000])
        assert_serving(p)


def test_unknown_message_type_after_login(pooler: RunningPooler) -> None:
    """The pooler forwards what it does not know; Postgres's FATAL reaches the client and ends its session."""
    with RawClient(pooler.port) as raw:
        raw.login(APP_USER, APP_PASSWORD, APP_DB)
        raw.send(pq.build(b"z", b"abc"))
        fields = raw.expect_fatal()
    assert (fields["C"], fields["M"]) == ("08P01", "invalid frontend message type 122")
    assert_serving(pooler)


# ==================================================================================================
# 2. The query protocol through the pooled endpoint
# ==================================================================================================


def test_simple_and_multi_statement_queries(pooler: RunningPooler) -> None:
    with RawClient(pooler.port) as raw:
        raw.login(APP_USER, APP_PASSWORD, APP_DB)
        messages = raw.simple_query("select 1; select 'two', 3; create temp table x (); drop table x")
        messages = [m for m in messages if m.kind != "N"]  # the temp table earns a session-state warning
        assert kinds(messages) == "TDCTDCCCZ"
        assert [data_row_values(m) for m in messages if m.kind == "D"] == [["1"], ["two", "3"]]
        # An error in the middle stops the rest of the string; the connection goes on.
        messages = raw.simple_query("select 1; select 1/0; select 3")
        assert kinds(messages) == "TDCEZ"
        assert messages[3].fields["C"] == "22012"
    with connect(pooler.dsn()) as conn:
        cur = conn.execute("select 1; select 'two'")
        assert cur.fetchall() == [(1,)]
        assert cur.nextset()
        assert cur.fetchall() == [("two",)]


def test_more_clients_than_servers(pooler: RunningPooler) -> None:
    """Eight clients, two servers: every transaction stays on one backend and sees only its own work."""
    errors: list[BaseException] = []
    backends: set[int] = set()
    lock = threading.Lock()
    start = threading.Barrier(8)

    def worker(n: int) -> None:
        try:
            with connect(pooler.dsn(), autocommit=False) as conn:
                start.wait(10)
                for i in range(15):
                    with conn.transaction():
                        first = conn.execute("select pg_backend_pid()").fetchone()
                        conn.execute("select set_config('pooler.test', %s, true)", [f"{n}-{i}"])
                        second = conn.execute("select pg_backend_pid(), current_setting('pooler.test')").fetchone()
                    assert first is not None and second == (first[0], f"{n}-{i}")
                    with lock:
                        backends.add(first[0])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert 1 <= len(backends) <= 2
    assert pooler.pool_stat()["servers"] <= 2


def test_empty_query(pooler: RunningPooler) -> None:
    with RawClient(pooler.port) as raw:
        raw.login(APP_USER, APP_PASSWORD, APP_DB)
        assert kinds(raw.simple_query("")) == "IZ"
        assert kinds(raw.simple_query("select 1")) == "TDCZ"
    with connect(pooler.dsn()) as conn:
        assert conn.pgconn.exec_(b"").status == psycopg.pq.ExecStatus.EMPTY_QUERY
        assert conn.execute("select 2").fetchone() == (2,)


def test_error_in_transaction_then_rollback(postgres: PostgresServer) -> None:
    with (
        running_pooler(make_config(postgres, default_pool_size=1)) as p,
        connect(p.dsn(), autocommit=False) as conn,
        connect(p.dsn()) as other,
    ):
        conn.execute("select 1")
        with pytest.raises(pg_errors.DivisionByZero):
            conn.execute("select 1/0")
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR
        with pytest.raises(pg_errors.InFailedSqlTransaction):
            conn.execute("select 1")
        conn.rollback()
        # The only server is free again: another client gets it, and it is not in a failed transaction.
        assert other.execute("select 5").fetchone() == (5,)
        assert conn.execute("select 6").fetchone() == (6,)
        conn.commit()


def test_extended_protocol_with_parameters(pooler: RunningPooler) -> None:
    with connect(pooler.dsn()) as conn:
        row = conn.execute("select %s::int + %s::int, %s::text, %s::numeric, %s", [1, 2, "ü", "1.5", None]).fetchone()
        assert row == (3, "ü", pytest.approx(1.5), None)
        cur = conn.cursor(binary=True)
        assert cur.execute("select %b::bytea", [b"\x00\x01\xff"]).fetchone() == (b"\x00\x01\xff",)
        with conn.cursor() as cur2:
            cur2.executemany("select %s::int", [(i,) for i in range(20)], returning=True)
            results = []
            while True:
                results.append(cur2.fetchone())
                if not cur2.nextset():
                    break
            assert results == [(i,) for i in range(20)]


def test_raw_pipeline_with_several_syncs_in_flight(pooler: RunningPooler) -> None:
    """Three Sync-terminated batches in one write, the middle one failing: three ReadyForQuery, in order."""
    with RawClient(pooler.port) as raw:
        raw.login(APP_USER, APP_PASSWORD, APP_DB)
        batch = b""
        for sql, value in (("select $1::int * 2", b"21"), ("select $1::int", b"zero"), ("select $1::text", b"ok")):
            batch += parse(sql) + bind([value]) + describe_portal() + execute() + pq.SYNC_MESSAGE
        raw.send(batch)
        first, second, third = (raw.read_until("Z") for _ in range(3))
    assert kinds(first) == "12TDCZ" and data_row_values(first[3]) == ["42"]
    # Parse went through, Bind failed on the value; Postgres skipped to the Sync.
    assert kinds(second) == "1EZ" and second[1].fields["C"] == "22P02"
    assert kinds(third) == "12TDCZ" and data_row_values(third[3]) == ["ok"]


def test_server_stays_linked_between_flush_and_sync(postgres: PostgresServer) -> None:
    """Parse/Describe/Flush then, later, Bind/Execute/Sync of the same unnamed statement (asyncpg's shape):
    no ReadyForQuery in between, yet the server must not go to another client, who would replace the
    unnamed statement."""
    with running_pooler(make_config(postgres, default_pool_size=1)) as p, RawClient(p.port) as raw:
        raw.login(APP_USER, APP_PASSWORD, APP_DB)
        raw.send(parse("select $1::int + 1") + describe_statement() + FLUSH_MESSAGE)
        assert [raw.expect(kind).kind for kind in "1tT"] == ["1", "t", "T"]

        other_result: list[object] = []

        def other_client() -> None:
            with connect(p.dsn()) as conn:
                other_result.append(conn.execute("select 'other'").fetchone())

        thread = threading.Thread(target=other_client)
        thread.start()
        try:
            wait_until(lambda: p.pool_stat()["waiting"] == 1, what="the other client to queue")
            assert other_result == []
            raw.send(bind([b"41"]) + execute() + pq.SYNC_MESSAGE)
            answer = raw.read_until("Z")
            assert kinds(answer) == "2DCZ" and data_row_values(answer[1]) == ["42"]
        finally:
            thread.join(20)
        assert other_result == [("other",)]


def test_psycopg_pipeline_mode(pooler: RunningPooler, table: str) -> None:
    with connect(pooler.dsn()) as conn, connect(pooler.dsn()) as other:
        with conn.pipeline() as p:
            curs = []
            for i in range(30):
                curs.append(conn.execute(f"insert into {table} values (%s, 'a') returning id", [i]))
                if i % 5 == 4:
                    p.sync()
        assert [c.fetchone() for c in curs] == [(i,) for i in range(30)]

        with pytest.raises(pg_errors.DivisionByZero), conn.pipeline() as p:
            conn.execute(f"insert into {table} values (100, 'b')")
            p.sync()
            conn.execute(f"insert into {table} values (101, 'b')")
            conn.execute("select 1/0")
            conn.execute(f"insert into {table} values (102, 'b')")
            p.sync()
            conn.execute(f"insert into {table} values (103, 'b')")
        assert other.execute(f"select count(*) from {table} where id < 100").fetchone() == (30,)
        # 100 committed in its own sync segment; 101 and 102 shared the failed one, so they rolled back.
        ids = other.execute(f"select array_agg(id order by id) from {table} where id >= 100").fetchone()
        assert ids is not None and ids[0][:1] == [100] and 101 not in ids[0] and 102 not in ids[0]
        assert conn.execute("select 'still usable'").fetchone() == ("still usable",)


async def test_asyncpg_executemany_and_fetch(pooler: RunningPooler, table: str) -> None:
    async def client(n: int) -> list[int]:
        conn = await asyncpg.connect(pooler.dsn(), statement_cache_size=0, timeout=10)
        try:
            await conn.executemany(f"insert into {table} values ($1, $2)", [(n * 1000 + i, f"c{n}") for i in range(50)])
            rows = await conn.fetch(f"select id from {table} where payload = $1 order by id", f"c{n}")
            async with conn.transaction():
                await conn.execute(f"update {table} set payload = payload || '!' where payload = $1", f"c{n}")
                assert await conn.fetchval(f"select count(*) from {table} where payload = $1", f"c{n}!") == 50
            return [r["id"] for r in rows]
        finally:
            await conn.close()

    results = await asyncio.wait_for(asyncio.gather(*(client(n) for n in range(4))), 60)
    assert results == [[n * 1000 + i for i in range(50)] for n in range(4)]


def test_copy_in_and_out_10mb(pooler: RunningPooler, table: str) -> None:
    rows = 160_000
    line = "{}\t" + "p" * 56 + "\n"
    data = "".join(line.format(i) for i in range(rows)).encode()
    assert len(data) > 10_000_000
    with connect(pooler.dsn()) as conn, connect(pooler.dsn()) as other:
        with conn.cursor() as cur:
            with cur.copy(f"copy {table} (id, payload) from stdin") as copy:
                for start in range(0, len(data), 1 << 20):
                    copy.write(data[start : start + (1 << 20)])
            assert cur.rowcount == rows
        # The COPY committed and released its server: another client sees every row.
        assert other.execute(f"select count(*), sum(length(payload)) from {table}").fetchone() == (rows, rows * 56)
        out = bytearray()
        with conn.cursor() as cur, cur.copy(f"copy (select id, payload from {table} order by id) to stdout") as copy:
            for chunk in copy:
                out += chunk
        assert hashlib.sha256(out).hexdigest() == hashlib.sha256(data).hexdigest()
        assert conn.execute("select 1").fetchone() == (1,)


def test_copy_from_stdin_failure_keeps_connection_usable(pooler: RunningPooler, table: str) -> None:
    with connect(pooler.dsn()) as conn:
        cur = conn.cursor()
        with pytest.raises(pg_errors.InvalidTextRepresentation), cur.copy(f"copy {table} from stdin") as copy:
            copy.write(b"1\tok\nnot-a-number\tbad\n")
        with pytest.raises(pg_errors.QueryCanceled), cur.copy(f"copy {table} from stdin") as copy:
            copy.write(b"2\tok\n")
            raise pg_errors.QueryCanceled("client gave up")  # psycopg sends CopyFail
        assert conn.execute(f"select count(*) from {table}").fetchone() == (0,)


def test_function_call(pooler: RunningPooler) -> None:
    with connect(pooler.dsn()) as conn:
        row = conn.execute("select 'int4abs'::regproc::oid, 'textcat'::regproc::oid").fetchone()
    assert row is not None
    int4abs, textcat = row
    with RawClient(pooler.port) as raw:
        raw.login(APP_USER, APP_PASSWORD, APP_DB)
        raw.send(function_call(int4abs, [b"-42"]))
        messages = raw.read_until("Z")
        assert kinds(messages) == "VZ"
        (length,) = struct.unpack_from("!i", messages[0].payload)
        assert messages[0].payload[4 : 4 + length] == b"42"
        raw.send(function_call(textcat, [b"pool", b"er"]) + function_call(int4abs, [b"oops"]))
        first, second = raw.read_until("Z"), raw.read_until("Z")
        assert kinds(first) == "VZ" and first[0].payload[4:] == b"pooler"
        assert kinds(second) == "EZ" and second[0].fields["C"] == "22P02"
        assert kinds(raw.simple_query("select 1")) == "TDCZ"


def test_notice_forwarding(pooler: RunningPooler) -> None:
    notices: list[tuple[str | None, str | None]] = []
    with connect(pooler.dsn()) as conn:
        conn.add_notice_handler(lambda diag: notices.append((diag.severity_nonlocalized, diag.message_primary)))
        conn.execute("DO $$ BEGIN RAISE NOTICE 'hi'; END $$")
        assert notices == [("NOTICE", "hi")]
        conn.execute("DO $$ BEGIN RAISE WARNING 'careful %', 42; END $$")
        assert notices[-1] == ("WARNING", "careful 42")


def test_notify_on_the_direct_endpoint(pooler: RunningPooler) -> None:
    channel = unique("chan")
    with connect(pooler.dsn(direct=True)) as listener, connect(pooler.dsn()) as sender:
        listener.execute(f"listen {channel}")
        row = sender.execute("select pg_backend_pid() from pg_notify(%s, 'hello')", [channel]).fetchone()
        assert row is not None
        received = list(listener.notifies(timeout=10, stop_after=1))
        assert [(n.channel, n.payload, n.pid) for n in received] == [(channel, "hello", row[0])]
        assert listener.execute("select 1").fetchone() == (1,)


def test_large_messages(pooler: RunningPooler) -> None:
    with connect(pooler.dsn()) as conn:
        text = "x" * 5_000_000
        assert conn.execute(f"select length('{text}')").fetchone() == (5_000_000,)
        blob = os.urandom(5_000_000)
        row = conn.cursor(binary=True).execute("select %b::bytea, length(%b::bytea)", [blob, blob]).fetchone()
        assert row is not None and row[0] == blob and row[1] == len(blob)
        row = conn.execute("select md5(repeat('ab', 3000000))").fetchone()
        assert row == (hashlib.md5(b"ab" * 3_000_000).hexdigest(),)


# ==================================================================================================
# 3. ParameterStatus and tracked parameters
# ==================================================================================================

REPORTED = ("server_version", "client_encoding", "DateStyle", "TimeZone", "integer_datetimes",
            "standard_conforming_strings", "application_name")  # fmt: skip


def test_new_client_gets_parameter_status(pooler: RunningPooler, postgres: PostgresServer) -> None:
    with psycopg.connect(postgres.dsn(APP_DB, APP_USER, APP_PASSWORD)) as direct:
        expected = {name: direct.info.parameter_status(name) for name in REPORTED}
    expected["application_name"] = "mine"
    with connect(pooler.dsn(application_name="mine")) as conn:
        got = {name: conn.info.parameter_status(name) for name in REPORTED}
    assert got == expected
    assert got["integer_datetimes"] == "on" and got["standard_conforming_strings"] == "on"


def test_application_name_follows_each_client(postgres: PostgresServer) -> None:
    with (
        running_pooler(make_config(postgres, default_pool_size=1)) as p,
        connect(p.dsn(application_name="alpha")) as a,
        connect(p.dsn(application_name="beta")) as b,
        connect(p.dsn()) as nameless,
    ):
        pids = set()
        for _ in range(4):
            for conn, name in ((a, "alpha"), (b, "beta"), (a, "alpha"), (nameless, "")):
                row = conn.execute("select current_setting('application_name'), pg_backend_pid()").fetchone()
                assert row is not None and row[0] == name
                pids.add(row[1])
            assert b.execute("show application_name").fetchone() == ("beta",)
        assert len(pids) == 1  # one backend served both clients, switching its application_name
        assert p.pool_stat()["servers"] == 1


def test_client_encoding_follows_each_client(postgres: PostgresServer) -> None:
    with (
        running_pooler(make_config(postgres, default_pool_size=1)) as p,
        connect(p.dsn(), client_encoding="LATIN1") as latin1,
        connect(p.dsn()) as utf8,
    ):
        for _ in range(3):
            assert latin1.execute("select 'é', current_setting('client_encoding')").fetchone() == ("é", "LATIN1")
            assert utf8.execute("select 'é', current_setting('client_encoding')").fetchone() == ("é", "UTF8")
        assert (latin1.info.encoding, utf8.info.encoding) == ("iso8859-1", "utf-8")


def test_set_timezone_is_carried_across_backends(postgres: PostgresServer) -> None:
    with (
        running_pooler(make_config(postgres, default_pool_size=1)) as p,
        connect(p.dsn()) as a,
        connect(p.dsn(), autocommit=False) as b,
    ):
        original = b.execute("show TimeZone").fetchone()
        b.commit()
        assert original is not None and original[0] != "Asia/Kolkata"
        a.execute("set TimeZone = 'Asia/Kolkata'")
        assert a.info.parameter_status("TimeZone") == "Asia/Kolkata"
        for _ in range(3):
            assert b.execute("show TimeZone").fetchone() == original
            b.commit()
            with a.transaction():
                assert a.execute("show TimeZone").fetchone() == ("Asia/Kolkata",)
            assert a.execute("select current_setting('TimeZone')").fetchone() == ("Asia/Kolkata",)
        assert b.info.parameter_status("TimeZone") == original[0]
        a.execute("reset TimeZone")
        assert a.execute("show TimeZone").fetchone() == original


# ==================================================================================================
# 4. psql
# ==================================================================================================


def run_psql(psql: Path, dsn: str, *args: str, cwd: Path | None = None) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    result = subprocess.run(
        [str(psql), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", dsn, *args],
        capture_output=True, text=True, timeout=60, env=env, cwd=cwd, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.parametrize("direct", [False, True], ids=["pooled", "direct"])
def test_psql_command(pooler: RunningPooler, psql: Path, direct: bool) -> None:
    out = run_psql(psql, pooler.dsn(direct=direct), "-c", "select 1, current_user, current_setting('application_name')")
    assert out.strip() == f"1|{APP_USER}|psql"  # psql's fallback_application_name, applied on either endpoint


def test_psql_script_with_copy(pooler: RunningPooler, psql: Path, table: str, tmp_path: Path) -> None:
    (tmp_path / "in.csv").write_text("".join(f"{i},row {i}\n" for i in range(1000)))
    script = tmp_path / "script.sql"
    script.write_text(
        f"""\
begin;
insert into {table} values (-1, 'first');
commit;
\\copy {table} (id, payload) from 'in.csv' with (format csv)
select count(*), sum(id) from {table};
\\copy (select id, payload from {table} where id >= 0 order by id) to 'out.csv' with (format csv)
select payload from {table} where id = 999;
"""
    )
    out = run_psql(psql, pooler.dsn(), "-f", str(script), cwd=tmp_path)
    assert out.splitlines() == ["1001|499499", "row 999"]
    assert (tmp_path / "out.csv").read_text() == (tmp_path / "in.csv").read_text()
