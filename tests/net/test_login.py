"""A client's login, end to end (pooler.net.login): authentication by every auth_type, databases, the startup
packet and its parameters, protocol negotiation, and bad input before the session begins. Real pooler, real
Postgres, real clients (psycopg, asyncpg, ``rawclient.RawClient`` for what no driver would send).

psycopg does not expose the SQLSTATE of a failed login, so login failures are checked twice: the message
through psycopg, the SQLSTATE and severity through the raw client. The ``pooler`` fixture (transaction mode,
two servers) is shared by the module; a test that needs special settings starts its own.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import psycopg
import pytest
from clienthelp import (
    assert_serving,
    assert_serving_as,
    auth_request_codes,
    connect,
    kinds,
    pg_authid_secret,
    psycopg_login_error,
    raw_fatal_after,
    raw_login_error,
    wait_until,
)
from harness import RunningPooler, free_port, make_config, running_pooler
from psycopg import errors as pg_errors
from rawclient import (
    Message,
    RawClient,
    data_row_values,
    gssenc_request,
    ssl_request,
    startup_packet,
)
from support import APP_DB, APP_PASSWORD, APP_USER, MD5_PASSWORD, MD5_USER, OTHER_DB, PostgresServer

from pooler.config import DatabaseConfig, PoolMode, UserlistEntry, load_config
from pooler.wire import messages as pq
from pooler.wire.auth import PASSWORD_FAILED, SASL_FAILED, AuthType, md5_secret, scram_verifier

PROTOCOL_3_2 = (3 << 16) | 2
PROTOCOL_4_0 = 4 << 16


@pytest.fixture(scope="module")
def pooler(postgres: PostgresServer) -> Iterator[RunningPooler]:
    """Transaction pooling with two servers per pool: most tests run more clients than that."""
    with running_pooler(make_config(postgres, default_pool_size=2)) as p:
        yield p


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
# 4. Bad input before the session
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


def test_non_password_message_during_authentication(pooler: RunningPooler) -> None:
    with RawClient(pooler.port) as raw:
        raw.startup({"user": APP_USER, "database": APP_DB})
        request = raw.expect("R")
        assert pq.read_int32(request.payload) == pq.AUTH_SASL
        raw.send(pq.query("select 1"))
        fields = raw.expect_fatal()
    assert (fields["C"], fields["M"]) == ("08P01", "expected a password message, got message type 'Q'")
    assert_serving(pooler)
