"""The frontend protocol and authentication, end to end: real pooler, real Postgres, real clients.

Clients are psycopg 3 (sync), asyncpg, psql in a subprocess, and ``rawclient.RawClient`` for what no
driver would send (malformed packets, protocol versions, messages out of place). psycopg does not expose
the SQLSTATE of a failed login, so login failures are checked twice: the message through psycopg, the
SQLSTATE and severity through the raw client.

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
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
import pytest
from harness import RunningPooler, free_port, make_config, running_pooler
from psycopg import errors as pg_errors
from rawclient import (
    FLUSH_MESSAGE,
    LoginFailedError,
    Message,
    RawClient,
    bind,
    data_row_values,
    describe_portal,
    describe_statement,
    execute,
    function_call,
    gssenc_request,
    parse,
    ssl_request,
    startup_packet,
)
from support import APP_DB, APP_PASSWORD, APP_USER, MD5_PASSWORD, MD5_USER, OTHER_DB, PostgresServer

from pooler.config import DatabaseConfig, PoolMode, UserlistEntry, load_config
from pooler.wire import messages as pq
from pooler.wire.auth import PASSWORD_FAILED, SASL_FAILED, AuthType, md5_secret, scram_verifier

Conn = psycopg.Connection[tuple[Any, ...]]

PROTOCOL_3_2 = (3 << 16) | 2
PROTOCOL_4_0 = 4 << 16


# --- helpers ----------------------------------------------------------------------------------------


def connect(dsn: str, *, autocommit: bool = True, **kwargs: Any) -> Conn:
    """psycopg with a timeout; no server-side prepared statements (they are not pooled yet)."""
    return psycopg.connect(dsn, connect_timeout=10, autocommit=autocommit, prepare_threshold=None, **kwargs)


def assert_serving(p: RunningPooler) -> None:
    """The pooler still logs in and runs queries for a fresh client."""
    with connect(p.dsn()) as conn:
        assert conn.execute("select 41 + 1").fetchone() == (42,)


def assert_serving_as(p: RunningPooler, user: str, password: str) -> None:
    with connect(p.dsn(APP_DB, user, password)) as conn:
        assert conn.execute("select 1").fetchone() == (1,)


def psycopg_login_error(dsn: str) -> str:
    with pytest.raises(psycopg.OperationalError) as info:
        psycopg.connect(dsn, connect_timeout=10)
    return str(info.value)


def raw_login_error(
    port: int, user: str, password: str | None, database: str = APP_DB, **params: str
) -> dict[str, str]:
    """Log in with the raw client, which must be refused with one FATAL and then disconnected."""
    with RawClient(port) as raw:
        raw.startup({"user": user, "database": database, **params})
        with pytest.raises(LoginFailedError) as info:
            raw.authenticate(user, password)
        assert raw.read_message() is None, "the connection must close after a FATAL login error"
    fields = info.value.fields
    assert fields["S"] == "FATAL", fields
    return fields


def raw_fatal_after(port: int, data: bytes) -> dict[str, str]:
    """Send ``data`` on a fresh connection: the pooler must answer with one FATAL and close."""
    with RawClient(port) as raw:
        raw.send(data)
        return raw.expect_fatal()


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0, what: str = "condition") -> None:
    """Poll a condition the pooler reaches asynchronously (its state lives on another thread)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def auth_request_codes(messages: list[Message]) -> list[int]:
    return [pq.read_int32(m.payload) for m in messages if m.kind == "R"]


def kinds(messages: list[Message]) -> str:
    return "".join(m.kind for m in messages)


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


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


def pg_authid_secret(postgres: PostgresServer, user: str) -> str:
    with psycopg.connect(postgres.dsn(), autocommit=True) as conn:
        row = conn.execute("select rolpassword from pg_authid where rolname = %s", [user]).fetchone()
    assert row is not None and row[0]
    return str(row[0])


# ==================================================================================================
# 1. Authentication
# ==================================================================================================

PASSWORDS = {APP_USER: APP_PASSWORD, MD5_USER: MD5_PASSWORD}


def userlist_secret(postgres: PostgresServer, user: str, kind: str) -> str:
    password = PASSWORDS[user]
    if kind == "plain":
        return password
    if kind == "md5":
        return md5_secret(user, password)
    if kind == "scram":
        return scram_verifier(password)
    assert kind == "pg_authid"
    return pg_authid_secret(postgres, user)


#: (auth_type, user, userlist secret kind, the authentication request the client must get).
AUTH_CASES = [
    (AuthType.SCRAM_SHA_256, APP_USER, "plain", pq.AUTH_SASL),
    (AuthType.SCRAM_SHA_256, MD5_USER, "plain", pq.AUTH_SASL),
    (AuthType.SCRAM_SHA_256, APP_USER, "pg_authid", pq.AUTH_SASL),  # SCRAM passthrough
    (AuthType.MD5, APP_USER, "plain", pq.AUTH_MD5),
    (AuthType.MD5, MD5_USER, "plain", pq.AUTH_MD5),
    (AuthType.MD5, MD5_USER, "md5", pq.AUTH_MD5),  # md5 hash passed through to Postgres
    (AuthType.MD5, APP_USER, "pg_authid", pq.AUTH_SASL),  # a SCRAM verifier under md5 is served with SCRAM
    (AuthType.PLAIN, APP_USER, "plain", pq.AUTH_CLEARTEXT),
    (AuthType.PLAIN, MD5_USER, "md5", pq.AUTH_CLEARTEXT),
    (AuthType.PLAIN, APP_USER, "scram", pq.AUTH_CLEARTEXT),  # the verifier checks; the cleartext logs in
    (AuthType.TRUST, APP_USER, "plain", pq.AUTH_OK),
    (AuthType.TRUST, MD5_USER, "md5", pq.AUTH_OK),
]


@pytest.mark.parametrize(
    ("auth_type", "user", "secret_kind", "request_code"),
    AUTH_CASES,
    ids=[f"{a.value}-{u}-{k}" for a, u, k, _ in AUTH_CASES],
)
def test_login_by_auth_type_and_secret(
    postgres: PostgresServer, auth_type: AuthType, user: str, secret_kind: str, request_code: int
) -> None:
    secret = userlist_secret(postgres, user, secret_kind)
    config = make_config(postgres, auth_type=auth_type, userlist=(UserlistEntry(user, secret),))
    with running_pooler(config) as p:
        password = PASSWORDS[user]
        with connect(p.dsn(APP_DB, user, password)) as conn:
            # The pooler logged in to Postgres as that user (SCRAM for app, md5 for md5user).
            assert conn.execute("select current_user, current_database()").fetchone() == (user, APP_DB)
        with RawClient(p.port) as raw:
            messages = raw.login(user, password, APP_DB)
            assert auth_request_codes(messages)[0] == request_code
            assert kinds(raw.simple_query("select 1")) == "TDCZ"

        if auth_type is AuthType.TRUST:
            with connect(p.dsn(APP_DB, user, "not-the-password")) as conn:  # trust never asks
                assert conn.execute("select current_user").fetchone() == (user,)
            return
        expected = SASL_FAILED if request_code == pq.AUTH_SASL else PASSWORD_FAILED  # PgBouncer's words
        message = psycopg_login_error(p.dsn(APP_DB, user, "wrong-password"))
        assert f"FATAL:  {expected}" in message
        fields = raw_login_error(p.port, user, "wrong-password")
        assert fields["C"] == "28P01"
        assert fields["M"] == expected
        assert_serving_as(p, user, password)


def test_scram_auth_type_refuses_an_md5_userlist_secret(postgres: PostgresServer) -> None:
    """PgBouncer: under scram-sha-256, auth_file must hold SCRAM verifiers or plain passwords."""
    config = make_config(
        postgres,
        auth_type=AuthType.SCRAM_SHA_256,
        userlist=(UserlistEntry(MD5_USER, md5_secret(MD5_USER, MD5_PASSWORD)),),
    )
    with running_pooler(config) as p:
        fields = raw_login_error(p.port, MD5_USER, MD5_PASSWORD)
        assert (fields["C"], fields["M"]) == ("28P01", SASL_FAILED)


@pytest.mark.parametrize("auth_type", [AuthType.SCRAM_SHA_256, AuthType.MD5, AuthType.PLAIN])
def test_unknown_user_gets_the_wrong_password_error(postgres: PostgresServer, auth_type: AuthType) -> None:
    """Nothing tells an unknown user from a wrong password (no user enumeration)."""
    with running_pooler(make_config(postgres, auth_type=auth_type)) as p:
        expected = SASL_FAILED if auth_type is AuthType.SCRAM_SHA_256 else PASSWORD_FAILED
        message = psycopg_login_error(p.dsn(APP_DB, "nobody", "whatever"))
        assert f"FATAL:  {expected}" in message
        fields = raw_login_error(p.port, "nobody", "whatever")
        assert (fields["C"], fields["M"]) == ("28P01", expected)
        wrong = raw_login_error(p.port, APP_USER, "wrong")
        assert wrong == fields
        assert_serving(p)


def test_pgbouncer_ini_with_auth_file(postgres: PostgresServer, tmp_path: Path) -> None:
    """A pgbouncer.ini in PgBouncer's own syntax, with a userlist.txt next to it, runs as is."""
    md5_hash = md5_secret(MD5_USER, MD5_PASSWORD)
    (tmp_path / "userlist.txt").write_text(
        f'; PgBouncer auth_file\n"{APP_USER}" "{APP_PASSWORD}"\n"{MD5_USER}" "{md5_hash}"\n'
    )
    port = free_port()
    ini = tmp_path / "pgbouncer.ini"
    ini.write_text(
        f"""\
;; a PgBouncer config, comments and all
[databases]
{APP_DB} = host={postgres.host} port={postgres.port} dbname={APP_DB}
other_alias = host={postgres.host} port={postgres.port} dbname={OTHER_DB} pool_size=1

[users]
{MD5_USER} = pool_mode=session

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
# auth_type is left at PgBouncer's default, md5
auth_file = userlist.txt
pool_mode = transaction
default_pool_size = 2
max_client_conn = 50
ignore_startup_parameters = extra_float_digits
log_connections = 0
log_disconnections = 0
"""
    )
    config = load_config(str(ini), environ={"POOLER_METRICS_PORT": "0"})  # no fixed port in tests
    assert config.settings.auth_file == str(tmp_path / "userlist.txt")
    with running_pooler(config) as p:
        assert p.port == port
        with connect(p.dsn(APP_DB, APP_USER, APP_PASSWORD)) as conn:
            assert conn.execute("select current_user").fetchone() == (APP_USER,)
        with connect(p.dsn("other_alias", MD5_USER, MD5_PASSWORD)) as conn:
            assert conn.execute("select current_user, current_database()").fetchone() == (MD5_USER, OTHER_DB)
            pool = p.call(lambda pl: pl.pools[("other_alias", MD5_USER)])
            assert (pool.mode, pool.size) == (PoolMode.SESSION, 1)  # from [users] and the connstring
        with RawClient(p.port) as raw:  # extra_float_digits is accepted: it is in ignore_startup_parameters
            messages = raw.login(APP_USER, APP_PASSWORD, APP_DB, extra_float_digits="3")
            assert auth_request_codes(messages)[0] == pq.AUTH_MD5
        assert f"FATAL:  {PASSWORD_FAILED}" in psycopg_login_error(p.dsn(password="nope"))
        fields = raw_login_error(p.port, APP_USER, APP_PASSWORD, "not_in_ini")
        assert fields["C"] == "3D000" and "not_in_ini" in fields["M"]


def test_auth_user_and_auth_query(postgres: PostgresServer) -> None:
    """Only the auth user is in the userlist; app's SCRAM verifier comes from pg_shadow (default auth_query)."""
    config = make_config(
        postgres,
        userlist=(UserlistEntry(postgres.superuser, postgres.superuser_password),),
        auth_user=postgres.superuser,
    )
    with running_pooler(config) as p:
        with connect(p.dsn(APP_DB, APP_USER, APP_PASSWORD)) as conn:
            assert conn.execute("select current_user").fetchone() == (APP_USER,)
        message = psycopg_login_error(p.dsn(APP_DB, APP_USER, "wrong-password"))
        assert f"FATAL:  {SASL_FAILED}" in message
        fields = raw_login_error(p.port, APP_USER, "wrong-password")
        assert (fields["C"], fields["M"]) == ("28P01", SASL_FAILED)
        # A role that does not exist: auth_query finds no row, and PgBouncer says so (src/client.c).
        fields = raw_login_error(p.port, "ghost", "whatever")
        assert (fields["C"], fields["M"]) == ("08P01", "no such user")
        assert p.call(lambda pl: APP_USER in pl.auth_cache and "ghost" in pl.auth_cache)
        with connect(p.dsn(APP_DB, APP_USER, APP_PASSWORD)) as conn:  # served from the auth cache now
            assert conn.execute("select 1").fetchone() == (1,)


# ==================================================================================================
# 2. Databases
# ==================================================================================================


def test_unknown_database_without_fallback(postgres: PostgresServer) -> None:
    databases = {APP_DB: DatabaseConfig(name=APP_DB, host=postgres.host, port=postgres.port)}
    with running_pooler(make_config(postgres, databases=databases)) as p:
        assert "no such database: nope" in psycopg_login_error(p.dsn("nope"))
        fields = raw_login_error(p.port, APP_USER, APP_PASSWORD, "nope")
        assert fields["C"] == "3D000"
        assert fields["M"] == "no such database: nope"
        assert_serving(p)


def test_fallback_to_a_database_postgres_does_not_have(pooler: RunningPooler) -> None:
    assert 'database "nope" does not exist' in psycopg_login_error(pooler.dsn("nope"))
    # Within server_login_retry the pool answers with the cached error, which keeps Postgres's SQLSTATE and text.
    fields = raw_login_error(pooler.port, APP_USER, APP_PASSWORD, "nope")
    assert fields["C"] == "3D000"
    assert (
        fields["M"]
        == 'server login has been failing, cached error: database "nope" does not exist (server_login_retry)'
    )
    with connect(pooler.dsn(OTHER_DB)) as conn:  # the "*" entry serves databases that do exist
        assert conn.execute("select current_database()").fetchone() == (OTHER_DB,)
    assert_serving(pooler)


# ==================================================================================================
# 3. Startup
# ==================================================================================================


@pytest.mark.parametrize("request_packet", [ssl_request(), gssenc_request()], ids=["SSLRequest", "GSSENCRequest"])
def test_encryption_request_is_declined_then_login_works(pooler: RunningPooler, request_packet: bytes) -> None:
    with RawClient(pooler.port) as raw:
        raw.send(request_packet)
        assert raw.read_byte() == b"N"
        raw.login(APP_USER, APP_PASSWORD, APP_DB)
        rows = [data_row_values(m) for m in raw.simple_query("select 7") if m.kind == "D"]
        assert rows == [["7"]]


def test_psycopg_sslmode(pooler: RunningPooler) -> None:
    with connect(pooler.dsn(sslmode="prefer")) as conn:
        assert conn.execute("select 1").fetchone() == (1,)
        assert not conn.pgconn.ssl_in_use
    message = psycopg_login_error(pooler.dsn(sslmode="require"))
    assert "server does not support SSL, but SSL was required" in message
    assert_serving(pooler)


def test_unsupported_protocol_major_version(pooler: RunningPooler) -> None:
    fields = raw_fatal_after(pooler.port, startup_packet({"user": APP_USER, "database": APP_DB}, PROTOCOL_4_0))
    assert fields["C"] == "0A000"
    assert fields["M"].startswith("unsupported frontend protocol 4.0")
    assert_serving(pooler)


def negotiate_payload(message: Message) -> tuple[int, list[str]]:
    newest, count = struct.unpack_from("!ii", message.payload)
    options = pq.parse_cstrings(message.payload[8:]) if count else []
    assert len(options) == count
    return newest, options


@pytest.mark.parametrize(
    ("protocol", "extra", "unsupported"),
    [
        (PROTOCOL_3_2, {}, []),
        (pq.PROTOCOL_3_0, {"_pq_.foo": "bar"}, ["_pq_.foo"]),
        (PROTOCOL_3_2, {"_pq_.foo": "bar"}, ["_pq_.foo"]),
    ],
    ids=["3.2", "_pq_.foo", "3.2+_pq_.foo"],
)
def test_negotiate_protocol_version(
    pooler: RunningPooler, protocol: int, extra: dict[str, str], unsupported: list[str]
) -> None:
    with RawClient(pooler.port) as raw:
        messages = raw.login(APP_USER, APP_PASSWORD, APP_DB, protocol=protocol, **extra)
        assert messages[0].kind == "v", messages  # before the first authentication request
        assert messages[1].kind == "R"
        # Postgres puts the whole version number there (libpq compares it as such): 3.0.
        assert negotiate_payload(messages[0]) == (pq.PROTOCOL_3_0, unsupported)
        assert kinds(raw.simple_query("select 1")) == "TDCZ"


def test_libpq_asking_for_protocol_3_2_gets_3_0(pooler: RunningPooler) -> None:
    if psycopg.pq.version() < 180000:
        pytest.skip("libpq < 18 cannot ask for protocol 3.2")
    with connect(pooler.dsn(max_protocol_version="3.2")) as conn:
        assert conn.pgconn.full_protocol_version == 30000
        assert conn.execute("select 1").fetchone() == (1,)


@pytest.mark.parametrize("key", ["extra_float_digits", "search_path"])
def test_unsupported_startup_parameter(pooler: RunningPooler, key: str) -> None:
    fields = raw_login_error(pooler.port, APP_USER, APP_PASSWORD, **{key: "3"})
    assert (fields["C"], fields["M"]) == ("08P01", f"unsupported startup parameter: {key}")
    assert "ignore_startup_parameters" in fields.get("H", "")
    assert_serving(pooler)


async def test_ignore_startup_parameters(postgres: PostgresServer) -> None:
    config = make_config(postgres, ignore_startup_parameters=("extra_float_digits",))
    with running_pooler(config) as p:
        with RawClient(p.port) as raw:
            raw.login(APP_USER, APP_PASSWORD, APP_DB, extra_float_digits="3")
            assert kinds(raw.simple_query("select 1")) == "TDCZ"
        # asyncpg sends server_settings as startup parameters, as JDBC does with extra_float_digits.
        conn = await asyncpg.connect(
            p.dsn(), statement_cache_size=0, server_settings={"extra_float_digits": "3"}, timeout=10
        )
        try:
            assert await conn.fetchval("select 1") == 1
        finally:
            await conn.close()


def test_options_with_tracked_parameters(pooler: RunningPooler) -> None:
    # options as a keyword: harness.dsn() urlencodes spaces as "+", which libpq URLs do not decode.
    conns = [connect(pooler.dsn(), options=f"-c application_name=opt{i} -c TimeZone=Asia/Tokyo") for i in range(3)]
    try:
        for _ in range(2):  # three clients, two servers: each query may land on any backend
            for i, conn in enumerate(conns):
                row = conn.execute("select current_setting('application_name'), current_setting('TimeZone')").fetchone()
                assert row == (f"opt{i}", "Asia/Tokyo")
        assert conns[0].info.parameter_status("application_name") == "opt0"
    finally:
        for conn in conns:
            conn.close()


def test_options_with_an_untracked_parameter_is_refused(pooler: RunningPooler) -> None:
    with pytest.raises(psycopg.OperationalError) as info:
        connect(pooler.dsn(), options="-c work_mem=1MB")
    message = str(info.value)
    assert "unsupported startup parameter in options: work_mem" in message
    fields = raw_login_error(pooler.port, APP_USER, APP_PASSWORD, options="-c work_mem=1MB")
    assert (fields["C"], fields["M"]) == ("08P01", "unsupported startup parameter in options: work_mem")
    assert_serving(pooler)


def test_invalid_value_of_a_tracked_startup_parameter(pooler: RunningPooler) -> None:
    """Postgres refuses a bad TimeZone at login; the pooler can only find out when it applies the value to a
    server, and must then say so rather than run the client's queries in a time zone it did not ask for."""
    with connect(pooler.dsn(), options="-c TimeZone=Not/AZone") as conn:
        with pytest.raises(
            pg_errors.InvalidParameterValue, match='invalid value for parameter "TimeZone": "Not/AZone"'
        ):
            conn.execute("select current_setting('TimeZone')")
        assert conn.closed
    with RawClient(pooler.port) as raw:
        raw.login(APP_USER, APP_PASSWORD, APP_DB, TimeZone="Not/AZone")
        raw.send(pq.query("select 1"))
        fields = raw.expect_fatal()
    assert (fields["C"], fields["M"]) == ("22023", 'invalid value for parameter "TimeZone": "Not/AZone"')
    assert_serving(pooler)


def test_login_and_first_query_in_one_write(postgres: PostgresServer) -> None:
    """A client may pipeline its password and first query behind the startup packet (Neon's fast connect)."""
    with running_pooler(make_config(postgres, auth_type=AuthType.PLAIN)) as p, RawClient(p.port) as raw:
        password = pq.build(b"p", pq.cstring(APP_PASSWORD))
        raw.send(startup_packet({"user": APP_USER, "database": APP_DB}) + password + pq.query("select 'early'"))
        login = raw.read_until("Z")
        assert auth_request_codes(login) == [pq.AUTH_CLEARTEXT, pq.AUTH_OK]
        assert kinds(login).endswith("KZ")
        answer = raw.read_until("Z")
        assert kinds(answer) == "TDCZ" and data_row_values(answer[1]) == ["early"]


# ==================================================================================================
# 4. Bad input
# ==================================================================================================


def startup_with_body(body: bytes, protocol: int = pq.PROTOCOL_3_0) -> bytes:
    """A startup packet with a correct length around an arbitrary (possibly malformed) body."""
    return struct.pack("!ii", 8 + len(body), protocol) + body


BAD_STARTUPS = {
    # (an HTTP request is not garbage any more: the pooled port answers it, see test_http.py)
    "garbage": (b"\x7fELF\x02\x01\x01\x00 not a startup packet", "invalid length of startup packet"),
    "length 3": (struct.pack("!i", 3), "invalid length of startup packet (3 bytes)"),
    "length 2**31-1": (struct.pack("!ii", 2**31 - 1, pq.PROTOCOL_3_0), "invalid length of startup packet"),
    "length 100000": (struct.pack("!ii", 100_000, pq.PROTOCOL_3_0) + b"x" * 1000, "invalid length of startup packet"),
    "no terminator": (startup_with_body(b"user\x00app"), "invalid startup packet"),
    "name without value": (startup_with_body(b"user\x00app\x00database\x00\x00"), "invalid startup packet"),
    "not utf-8": (startup_with_body(b"user\x00\xff\xfe\x00\x00"), "invalid startup packet"),
    "garbage protocol": (startup_with_body(b"user\x00app\x00\x00", protocol=1234), "unsupported frontend protocol"),
}


@pytest.mark.parametrize("name", list(BAD_STARTUPS))
def test_bad_startup_packet(pooler: RunningPooler, name: str) -> None:
    data, expected = BAD_STARTUPS[name]
    fields = raw_fatal_after(pooler.port, data)
    assert fields["C"] == ("0A000" if name == "garbage protocol" else "08P01"), fields
    assert expected in fields["M"], fields
    assert_serving(pooler)


def client_count(p: RunningPooler) -> int:
    return p.call(lambda pooler: len(pooler.clients))


def test_truncated_startup_then_eof(pooler: RunningPooler) -> None:
    wait_until(lambda: client_count(pooler) == 0, what="earlier clients to leave")
    with RawClient(pooler.port) as raw:
        raw.send(startup_packet({"user": APP_USER, "database": APP_DB})[:15])
        wait_until(lambda: client_count(pooler) == 1, what="the pooler to accept the connection")
        raw.shutdown_write()
        assert raw.read_to_eof() == []  # dropped without a word, as Postgres does
    wait_until(lambda: client_count(pooler) == 0, what="the pooler to forget the client")
    assert_serving(pooler)


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


def test_oversized_password_message(pooler: RunningPooler) -> None:
    with RawClient(pooler.port) as raw:
        raw.startup({"user": APP_USER, "database": APP_DB})
        raw.expect("R")
        raw.send(b"p" + struct.pack("!i", 50_000))
        fields = raw.expect_fatal()
    assert (fields["C"], fields["M"]) == ("08P01", "invalid password message length 50000")
    assert_serving(pooler)


def test_startup_without_user_or_for_replication(pooler: RunningPooler) -> None:
    fields = raw_fatal_after(pooler.port, startup_packet({"database": APP_DB}))
    assert (fields["C"], fields["M"]) == ("28000", "no PostgreSQL user name specified in startup packet")
    fields = raw_fatal_after(pooler.port, startup_packet({"user": APP_USER, "replication": "database"}))
    assert (fields["C"], fields["M"]) == ("08P01", "replication connections are not supported by the pooler")
    assert_serving(pooler)


def test_unknown_message_type_after_login(pooler: RunningPooler) -> None:
    """The pooler forwards what it does not know; Postgres's FATAL reaches the client and ends its session."""
    with RawClient(pooler.port) as raw:
        raw.login(APP_USER, APP_PASSWORD, APP_DB)
        raw.send(pq.build(b"z", b"abc"))
        fields = raw.expect_fatal()
    assert (fields["C"], fields["M"]) == ("08P01", "invalid frontend message type 122")
    assert_serving(pooler)


def test_non_password_message_during_authentication(pooler: RunningPooler) -> None:
    with RawClient(pooler.port) as raw:
        raw.startup({"user": APP_USER, "database": APP_DB})
        request = raw.expect("R")
        assert pq.read_int32(request.payload) == pq.AUTH_SASL
        raw.send(pq.query("select 1"))
        fields = raw.expect_fatal()
    assert (fields["C"], fields["M"]) == ("08P01", "expected a password message, got message type 'Q'")
    assert_serving(pooler)


# ==================================================================================================
# 5. The query protocol through the pooled endpoint
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
# 6. ParameterStatus and tracked parameters
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
# 7. psql
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
