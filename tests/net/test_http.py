"""SQL over HTTP against a real pooler and Postgres: Neon's shapes byte for byte, pooled semantics (one
pool, FIFO, timeouts, max_client_conn, SHOW, cancel on disconnect, session-state checks), and bad input,
each answered clearly while other requests are served. The driver's view is in test_neon_driver.py."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from backends import Activity, wait_until
from harness import RunningPooler, free_port, make_config, running_pooler
from httpclient import HttpClient, Reply
from opshelp import BLOCKED_QUERY, blocking, show
from support import APP_DB, APP_USER, MD5_PASSWORD, MD5_USER, OTHER_DB, PostgresServer

from pooler.config import UserlistEntry
from pooler.wire.auth import AuthType


@pytest.fixture(scope="module")
def pooler(postgres: PostgresServer) -> Iterator[RunningPooler]:
    with running_pooler(make_config(postgres, default_pool_size=5, max_client_conn=1000,
                                    http_port=free_port())) as running:
        yield running


async def sql(p: RunningPooler, body: Any, *, url: str | None = None, headers: dict[str, str] | None = None,
              port: int | None = None) -> Reply:
    client = await HttpClient.open(port or p.port)
    try:
        return await client.sql(url or p.dsn(), body, headers=headers)
    finally:
        await client.close()


async def served(p: RunningPooler) -> None:
    """Another client is answered normally (after some bad input)."""
    reply = await sql(p, {"query": "SELECT 1"})
    assert reply.status == 200 and reply.json["rows"] == [["1"]]


def error_keys(reply: Reply) -> list[str]:
    return list(reply.json)


NEON_ERROR_KEYS = ["message", "code", "detail", "hint", "position", "internalPosition", "internalQuery", "severity",
                   "where", "table", "column", "schema", "dataType", "constraint", "file", "line", "routine"]


# --- shapes -----------------------------------------------------------------------------------------


async def test_response_shape_keys_in_order_and_headers(pooler: RunningPooler) -> None:
    reply = await sql(pooler, {"query": "SELECT $1::int AS a, NULL::text AS b", "params": ["5"]})
    assert reply.status == 200
    assert reply.headers["content-type"] == "application/json"
    assert reply.headers["access-control-allow-origin"] == "*"
    uuid.UUID(reply.headers["neon-request-id"])
    assert reply.body == (
        b'{"fields":[{"name":"a","dataTypeID":23,"tableID":0,"columnID":0,"dataTypeSize":4,"dataTypeModifier":-1,'
        b'"format":"text"},{"name":"b","dataTypeID":25,"tableID":0,"columnID":0,"dataTypeSize":-1,'
        b'"dataTypeModifier":-1,"format":"text"}],"rows":[["5",null]],"command":"SELECT","rowCount":1,'
        b'"rowAsArray":true}'
    )


async def test_values_typed_without_raw_text_output(pooler: RunningPooler) -> None:
    reply = await sql(pooler, {"query": "SELECT 1::int4 AS i, 2::int8 AS big, true AS b, 'NaN'::float8 AS nan, "
                                        "1.5::float4 AS f, '{\"k\": [1]}'::jsonb AS j, ARRAY[1,NULL,3] AS ia, "
                                        "ARRAY['a b', NULL, 'q\"x', 'NULL'] AS ta, 1.50::numeric AS n"},
                      headers={"Neon-Raw-Text-Output": "false", "Neon-Array-Mode": "false"})
    assert reply.status == 200
    assert reply.json["rows"] == [{"i": 1, "big": "2", "b": True, "nan": "NaN", "f": 1.5, "j": {"k": [1]},
                                   "ia": [1, None, 3], "ta": ["a b", None, 'q"x', "NULL"], "n": "1.50"}]
    assert reply.json["rowAsArray"] is False


async def test_json_params_as_neon_converts_them(pooler: RunningPooler) -> None:
    reply = await sql(pooler, {"query": "SELECT $1::int, $2::bool, $3::jsonb, $4::int[], $5::text",
                               "params": [3, True, {"a": 1}, [1, 2], None]})
    assert reply.json["rows"] == [["3", "t", '{"a": 1}', "{1,2}", None]]


async def test_command_and_row_count_without_rows(pooler: RunningPooler) -> None:
    reply = await sql(pooler, {"query": "CREATE TEMP TABLE t_http (x int)"})
    assert reply.json == {"fields": [], "rows": [], "command": "CREATE", "rowCount": None, "rowAsArray": True}


async def test_batch_headers_echoed(pooler: RunningPooler) -> None:
    reply = await sql(pooler, {"queries": [{"query": "SELECT current_setting('transaction_isolation')"}]},
                      headers={"Neon-Batch-Isolation-Level": "RepeatableRead", "Neon-Batch-Read-Only": "true",
                               "Neon-Batch-Deferrable": "true"})
    assert reply.status == 200
    assert reply.json["results"][0]["rows"] == [["repeatable read"]]
    assert reply.headers["neon-batch-isolation-level"] == "RepeatableRead"
    assert reply.headers["neon-batch-read-only"] == "true" and reply.headers["neon-batch-deferrable"] == "true"


async def test_read_only_batch_refuses_writes(pooler: RunningPooler) -> None:
    reply = await sql(pooler, {"queries": [{"query": "CREATE TEMP TABLE t_ro (x int)"}]},
                      headers={"Neon-Batch-Read-Only": "true"})
    assert reply.status == 400 and reply.json["code"] == "25006"


async def test_invalid_isolation_level(pooler: RunningPooler) -> None:
    reply = await sql(pooler, {"queries": []}, headers={"Neon-Batch-Isolation-Level": "Chaos"})
    assert reply.status == 400 and reply.json["message"] == "invalid isolation level"
    assert error_keys(reply) == NEON_ERROR_KEYS


async def test_error_json_has_every_field(pooler: RunningPooler) -> None:
    reply = await sql(pooler, {"query": "SELECT nope"})
    assert reply.status == 400 and error_keys(reply) == NEON_ERROR_KEYS
    assert reply.json["code"] == "42703" and reply.json["position"] == "8" and isinstance(reply.json["line"], str)


async def test_options_answers_cors(pooler: RunningPooler) -> None:
    client = await HttpClient.open(pooler.port)
    try:
        reply = await client.request("OPTIONS", "/sql")
    finally:
        await client.close()
    assert reply.status == 200 and reply.headers["access-control-allow-origin"] == "*"
    assert "Neon-Connection-String" in reply.headers["access-control-allow-headers"]
    assert "POST" in reply.headers["access-control-allow-methods"]


async def test_http_port_serves_sql(pooler: RunningPooler) -> None:
    reply = await sql(pooler, {"query": "SELECT 2"}, port=pooler.call(lambda p: p.ports["http"]))
    assert reply.status == 200 and reply.json["rows"] == [["2"]]


async def test_keep_alive_connection_logs_in_once(pooler: RunningPooler) -> None:
    client = await HttpClient.open(pooler.port)
    try:
        ids = set()
        for _ in range(3):
            reply = await client.sql(pooler.dsn(), {"query": "SELECT 1"})
            assert reply.status == 200
            ids |= pooler.call(lambda p: {c.id for c in p.clients if c.cleartext})
        assert len(ids) == 1  # one pooled client served all three requests
        other = await client.sql(pooler.dsn(OTHER_DB), {"query": "SELECT current_database()"})
        assert other.json["rows"] == [[OTHER_DB]]  # another connection string: another session
    finally:
        await client.close()


# --- pooled, not a side door ------------------------------------------------------------------------


async def test_300_concurrent_requests_on_a_pool_of_5(postgres: PostgresServer) -> None:
    """Backends counted by the application_name the requests carry: only this pooler's backends."""
    with running_pooler(make_config(postgres, default_pool_size=5, max_client_conn=1000)) as pooler:
        peak = 0
        done = asyncio.Event()

        async def watch() -> None:
            nonlocal peak
            async with await psycopg.AsyncConnection.connect(postgres.dsn(), autocommit=True) as conn:
                while not done.is_set():
                    cur = await conn.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'http300'")
                    row = await cur.fetchone()
                    peak = max(peak, row[0] if row else 0)
                    await asyncio.sleep(0.01)

        url = pooler.dsn(application_name="http300")
        watcher = asyncio.create_task(watch())
        replies = await asyncio.gather(*(sql(pooler, {"query": "SELECT $1::int, pg_sleep(0.005)", "params": [str(i)]},
                                             url=url) for i in range(300)))
        done.set()
        await watcher
        assert [r.status for r in replies] == [200] * 300
        assert sorted(int(r.json["rows"][0][0]) for r in replies) == list(range(300))
        assert 0 < peak <= 5
        xacts = pooler.call(lambda p: p.pools[(APP_DB, APP_USER)].stats.xact_count)
        assert xacts >= 300  # counted in SHOW STATS like any client's transactions


async def test_query_wait_timeout_answers_a_queued_request(postgres: PostgresServer) -> None:
    with running_pooler(make_config(postgres, default_pool_size=1, query_wait_timeout=0.5)) as p:
        first = asyncio.create_task(sql(p, {"query": "SELECT pg_sleep(2)"}))
        await wait_until(lambda: p.pool_stat()["active"] == 1, what="the first request on the only server")
        queued = await sql(p, {"query": "SELECT 1"})
        assert queued.status == 400 and queued.json["message"] == "query_wait_timeout"
        assert queued.json["code"] == "08P01" and queued.json["severity"] == "FATAL"
        assert (await first).status == 200


async def test_query_timeout_answers_and_the_pool_recovers(postgres: PostgresServer) -> None:
    with running_pooler(make_config(postgres, query_timeout=0.5)) as p:
        reply = await sql(p, {"query": "SELECT pg_sleep(5)"})
        assert reply.status == 400 and reply.json["message"] == "query timeout"
        await served(p)


async def test_visible_in_show_clients_and_pools(postgres: PostgresServer) -> None:
    with running_pooler(make_config(postgres, admin_users=(APP_USER,))) as p, blocking(postgres, APP_DB) as blocker:
        request = asyncio.create_task(sql(p, {"query": BLOCKED_QUERY}))
        await wait_until(lambda: p.pool_stat()["active"] == 1, what="the request on a server")
        clients = [c for c in await asyncio.to_thread(show, p, "CLIENTS") if c["database"] == APP_DB]
        assert len(clients) == 1 and clients[0]["user"] == APP_USER and clients[0]["addr"] == "127.0.0.1"
        assert clients[0]["state"] == "active"
        pools = [r for r in await asyncio.to_thread(show, p, "POOLS") if r["database"] == APP_DB]
        assert pools[0]["cl_active"] == 1 and pools[0]["sv_active"] == 1
        blocker.release()
        assert (await request).status == 200


async def test_client_going_away_cancels_its_query(pooler: RunningPooler, aactivity: Activity) -> None:
    client = await HttpClient.open(pooler.port)
    await client.send_raw(b"")
    client.writer.write(_post(pooler.dsn(), {"query": "SELECT pg_sleep(30)"}))
    await wait_until(lambda: _sleeping(aactivity), what="the query running")
    await client.close()
    await wait_until(lambda: _not_sleeping(aactivity), timeout=5, what="the query cancelled")
    await served(pooler)


async def _sleeping(activity: Activity) -> bool:
    return any("pg_sleep(30)" in (r.get("query") or "") and r.get("state") == "active"
               for r in await activity.arows())


async def _not_sleeping(activity: Activity) -> bool:
    return not await _sleeping(activity)


def _post(url: str, body: Any) -> bytes:
    data = json.dumps(body).encode()
    return (b"POST /sql HTTP/1.1\r\nHost: x\r\nNeon-Connection-String: " + url.encode() +
            b"\r\nContent-Length: " + str(len(data)).encode() + b"\r\n\r\n" + data)


async def test_max_client_conn_counts_http_requests(postgres: PostgresServer) -> None:
    with running_pooler(make_config(postgres, max_client_conn=1)) as p:
        holder = await psycopg.AsyncConnection.connect(p.dsn(), autocommit=True)
        try:
            reply = await sql(p, {"query": "SELECT 1"})
            assert reply.status == 400 and reply.json["code"] == "53300"
            assert reply.json["message"] == "no more connections allowed (max_client_conn)"
        finally:
            await holder.close()
        await served(p)


async def test_password_checked_against_an_md5_secret(postgres: PostgresServer) -> None:
    with running_pooler(make_config(postgres, auth_type=AuthType.MD5)) as p:
        ok = await sql(p, {"query": "SELECT current_user"}, url=p.dsn(APP_DB, MD5_USER, MD5_PASSWORD))
        assert ok.status == 200 and ok.json["rows"] == [[MD5_USER]]
        bad = await sql(p, {"query": "SELECT 1"}, url=p.dsn(APP_DB, MD5_USER, "nope"))
        assert bad.status == 400 and bad.json["code"] == "28P01"


async def test_password_checked_through_auth_query(postgres: PostgresServer) -> None:
    """Only the auth user is in the userlist: app's SCRAM verifier comes from auth_query, as for a TCP login."""
    config = make_config(postgres, userlist=(UserlistEntry(postgres.superuser, postgres.superuser_password),),
                         auth_user=postgres.superuser)
    with running_pooler(config) as p:
        ok = await sql(p, {"query": "SELECT current_user"})
        assert ok.status == 200 and ok.json["rows"] == [[APP_USER]]
        bad = await sql(p, {"query": "SELECT 1"}, url=p.dsn(password="wrong-password"))
        assert bad.status == 400 and bad.json["code"] == "28P01"
        assert bad.json["message"] == 'password authentication failed'


async def test_admin_console_and_jwt_are_refused_clearly(pooler: RunningPooler) -> None:
    admin = await sql(pooler, {"query": "SHOW POOLS"}, url=pooler.dsn("pgbouncer"))
    assert admin.status == 400 and "admin console" in admin.json["message"]
    jwt = await sql(pooler, {"query": "SELECT 1"}, url=pooler.dsn(password=None),
                    headers={"Authorization": "Bearer eyJ0eXAiOiJKV1QifQ.e30.x"})
    assert jwt.status == 400 and "JWT" in jwt.json["message"] and jwt.json["code"] == "28000"


async def test_session_state_checks_apply(postgres: PostgresServer) -> None:
    with running_pooler(make_config(postgres, session_state_check="error")) as p:
        reply = await sql(p, {"query": "SET search_path TO public"})
        assert reply.status == 400 and reply.json["code"] == "0A000"
        assert "does not survive transaction pooling" in reply.json["message"]
        await served(p)


# --- bad input --------------------------------------------------------------------------------------


async def raw_exchange(port: int, data: bytes) -> Reply:
    client = await HttpClient.open(port)
    try:
        await client.send_raw(data)
        return await client.read_reply()
    finally:
        await client.close()


async def test_malformed_request_line(pooler: RunningPooler) -> None:
    reply = await raw_exchange(pooler.port, b"POST\x01 /sql HTTP/1.1\r\n\r\n")
    assert reply.status == 400 and reply.json["message"].startswith("malformed HTTP request")
    await served(pooler)


async def test_oversized_headers(postgres: PostgresServer) -> None:
    with running_pooler(make_config(postgres, http_max_header_size=1024)) as p:
        reply = await sql(p, {"query": "SELECT 1"}, headers={"X-Big": "x" * 2000})
        assert reply.status == 431 and "http_max_header_size" in reply.json["message"]
        trickle = await raw_exchange(p.port, b"POST /sql HTTP/1.1\r\nX-Big: " + b"x" * 3000)
        assert trickle.status == 431
        await served(p)


async def test_oversized_and_chunked_bodies(postgres: PostgresServer) -> None:
    with running_pooler(make_config(postgres, http_max_body_size=1024)) as p:
        big = json.dumps({"query": "SELECT '" + "x" * 2000 + "'"}).encode()
        reply = await sql(p, {"query": "SELECT '" + "x" * 2000 + "'"})
        assert reply.status == 413 and "http_max_body_size" in reply.json["message"]
        head = (b"POST /sql HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nNeon-Connection-String: "
                + p.dsn().encode() + b"\r\n\r\n")
        chunked = await raw_exchange(p.port, head + b"%x\r\n" % len(big) + big + b"\r\n0\r\n\r\n")
        assert chunked.status == 413
        small = json.dumps({"query": "SELECT 3"}).encode()
        ok = await raw_exchange(p.port, head + b"%x\r\n" % len(small) + small + b"\r\n0\r\n\r\n")
        assert ok.status == 200 and ok.json["rows"] == [{"?column?": 3}]  # no Neon-* output headers: typed
        await served(p)


async def test_invalid_json_and_missing_connection_string(pooler: RunningPooler) -> None:
    client = await HttpClient.open(pooler.port)
    try:
        reply = await client.request("POST", "/sql", b"{not json", {"Neon-Connection-String": pooler.dsn()})
        assert reply.status == 400 and reply.json["message"].startswith("invalid request body: not JSON")
        assert error_keys(reply) == NEON_ERROR_KEYS
        reply = await client.request("POST", "/sql", b'{"query": "SELECT 1"}')
        assert reply.status == 400 and reply.json["message"] == "missing Neon-Connection-String header"
        reply = await client.request("POST", "/sql", b'{"query": "SELECT 1"}',
                                     {"Neon-Connection-String": "mysql://x@y/z"})
        assert reply.status == 400 and "postgresql://" in reply.json["message"]
        reply = await client.request("POST", "/sql", b'{"query": 1}', {"Neon-Connection-String": pooler.dsn()})
        assert reply.status == 400 and "query" in reply.json["message"]
    finally:
        await client.close()
    await served(pooler)


async def test_expect_100_continue_answered_at_once(pooler: RunningPooler) -> None:
    body = json.dumps({"query": "SELECT 'continued'"}).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", pooler.port)
    try:
        writer.write(b"POST /sql HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: "
                     + str(len(body)).encode() + b"\r\nNeon-Connection-String: " + pooler.dsn().encode() + b"\r\n\r\n")
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)
        assert interim.startswith(b"HTTP/1.1 100 ")
        writer.write(body)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200 ")
    finally:
        writer.close()


async def test_wrong_method_and_path(pooler: RunningPooler) -> None:
    client = await HttpClient.open(pooler.port)
    try:
        reply = await client.request("GET", "/sql")
        assert reply.status == 405 and reply.headers["allow"] == "OPTIONS, POST"
    finally:
        await client.close()
    reply = await raw_exchange(pooler.port, b"GET /elsewhere HTTP/1.1\r\nHost: x\r\n\r\n")
    assert reply.status == 404
    await served(pooler)


async def test_slowloris_cut_by_client_login_timeout(postgres: PostgresServer) -> None:
    with running_pooler(make_config(postgres, client_login_timeout=0.5)) as p:
        client = await HttpClient.open(p.port)
        try:
            await client.send_raw(b"POST /sql HTTP/1.1\r\nHost: x\r\n")
            await served(p)
            await asyncio.sleep(0.3)
            await client.send_raw(b"X-Slow: 1\r\n")
            reply = await client.read_reply(timeout=3)
            assert reply.status == 408 and reply.json["message"].startswith("client_login_timeout")
            assert await client.at_eof()
        finally:
            await client.close()
        assert p.call(lambda pooler: len(pooler.http_connections)) == 0


async def test_response_too_large(postgres: PostgresServer) -> None:
    with running_pooler(make_config(postgres, http_max_response_size=4096)) as p:
        reply = await sql(p, {"query": "SELECT repeat('x', 100) FROM generate_series(1, 1000)"})
        assert reply.status == 507 and reply.json["message"] == "response is too large (max is 4096 bytes)"
        await served(p)
