"""HTTPS and WSS on the pooled port: Neon's SQL over HTTP and WebSocket inside the pooled port's TLS.

One TLS context serves both (ALPN ``postgresql`` or ``http/1.1``, or none); after the handshake the
first decrypted byte tells a startup packet from an HTTP request, as on a plaintext connection. Tested
with the real ``@neondatabase/serverless`` driver (tests/node/neon_tls.mjs, configured only with the
``neonConfig`` lines ``pooler up`` prints, the test CA in NODE_EXTRA_CA_CERTS) and raw TLS sockets.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import ssl
import struct
import subprocess
from pathlib import Path
from typing import Any

import psycopg
import pytest
from harness import RunningPooler, free_port, make_config, running_pooler
from httpclient import HttpClient
from support import APP_USER, PostgresServer
from test_up_neon import pooler_up

from pooler.dev.certs import LocalCertificates, ensure_local_certificates
from pooler.wire.neon_sql import driver_config

NODE_DIR = Path(__file__).parents[1] / "node"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> LocalCertificates:
    return ensure_local_certificates(tmp_path_factory.mktemp("https"))


def tls_config(postgres: PostgresServer, certs: LocalCertificates, mode: str, **settings: object) -> Any:
    return make_config(postgres, client_tls_sslmode=mode, client_tls_cert_file=str(certs.cert_file),
                       client_tls_key_file=str(certs.key_file), admin_users=(APP_USER,), **settings)


def run_neon_driver(url: str, lines: str, ca_file: Path | str, tmp_path: Path) -> dict[str, Any]:
    """tests/node/neon_tls.mjs with ``lines`` as its whole neonConfig."""
    node = shutil.which("node")
    assert node is not None, "Node.js is required for the driver tests"
    assert (NODE_DIR / "node_modules" / "@neondatabase" / "serverless").is_dir(), "run `npm ci` in tests/node"
    config_file = tmp_path / "neonconfig.js"
    config_file.write_text(lines)
    env = {**os.environ, "NODE_EXTRA_CA_CERTS": str(ca_file)}
    result = subprocess.run([node, "neon_tls.mjs", url, str(config_file)], cwd=NODE_DIR, env=env,
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    report: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return report


def assert_driver_works(report: dict[str, Any]) -> None:
    assert report["http"] == {"value": [{"n": 7, "who": APP_USER}]}, report
    assert report["httpBatch"] == {"value": [[{"a": 1}], [{"b": 2}]]}, report
    assert report["httpError"]["error"]["code"] == "22012", report
    assert report["wsPool"] == {"value": [2, 4, 6]}, report
    for pipeline in ("password", "false"):
        assert report[f"wsClient_{pipeline}"] == {"value": [{"hello": "world"}]}, report


def test_neon_driver_over_https_and_wss(postgres: PostgresServer, certs: LocalCertificates, tmp_path: Path) -> None:
    """With client_tls_sslmode = require: the driver over https:// and wss:// works; over http:// and ws://
    each request and WebSocket gets Postgres's "SSL required" error instead of a session."""
    with running_pooler(tls_config(postgres, certs, "require")) as p:
        url = p.dsn().replace("127.0.0.1", "localhost")
        report = run_neon_driver(url, driver_config("localhost", p.port, tls=True), certs.ca_file, tmp_path)
        assert report["config"] == {"fetchEndpoint": f"https://localhost:{p.port}/sql", "useSecureWebSocket": True}
        assert_driver_works(report)
        plain = run_neon_driver(url, driver_config("localhost", p.port), certs.ca_file, tmp_path)
        assert "SSL required" in plain["http"]["error"]["message"], plain
        for name in ("wsPool", "wsClient_password", "wsClient_false"):
            assert "SSL required" in plain[name]["error"]["message"], (name, plain)
        with psycopg.connect(p.dsn(sslmode="require")) as conn:  # everyone else is still served
            assert conn.execute("select 1").fetchone() == (1,)


def test_plain_http_and_ws_still_work_when_tls_is_offered(postgres: PostgresServer, certs: LocalCertificates,
                                                          tmp_path: Path) -> None:
    """client_tls_sslmode = prefer (pooler up's default): HTTPS/WSS and HTTP/WS side by side."""
    with running_pooler(tls_config(postgres, certs, "prefer")) as p:
        url = p.dsn().replace("127.0.0.1", "localhost")
        for tls in (True, False):
            assert_driver_works(run_neon_driver(url, driver_config("localhost", p.port, tls=tls), certs.ca_file,
                                                tmp_path))


async def _https(p: RunningPooler, context: ssl.SSLContext) -> tuple[Any, str | None]:
    reader, writer = await asyncio.open_connection("127.0.0.1", p.port, ssl=context, server_hostname="localhost")
    client = HttpClient(reader, writer)
    try:
        alpn = writer.get_extra_info("ssl_object").selected_alpn_protocol()
        first = await client.sql(p.dsn(), {"query": "SELECT $1::int + 1 AS n", "params": ["41"]})
        second = await client.sql(p.dsn(), {"query": "SELECT 'kept alive' AS s"})  # the same TLS connection
        return (first.status, first.json["rows"], second.json["rows"]), alpn
    finally:
        await client.close()


async def test_raw_https_requests_with_and_without_alpn(postgres: PostgresServer, certs: LocalCertificates) -> None:
    http_port = free_port()
    with running_pooler(tls_config(postgres, certs, "require", http_port=http_port)) as p:
        # http_port is plaintext only: under client_tls_sslmode = require its requests are refused.
        client = await HttpClient.open(http_port)
        try:
            reply = await client.sql(p.dsn(), {"query": "SELECT 1"})
            assert reply.status == 400 and "SSL required" in reply.json["message"], reply
        finally:
            await client.close()
        for offered, selected in (([], None), (["http/1.1"], "http/1.1"), (["h2", "http/1.1"], "http/1.1")):
            context = ssl.create_default_context(cafile=str(certs.ca_file))
            if offered:
                context.set_alpn_protocols(offered)
            answer, alpn = await _https(p, context)
            assert alpn == selected
            assert answer == (200, [["42"]], [["kept alive"]])


async def test_alpn_postgresql_is_not_http(postgres: PostgresServer, certs: LocalCertificates) -> None:
    """A client that agreed on ALPN "postgresql" speaks Postgres: HTTP bytes are an invalid startup packet."""
    with running_pooler(tls_config(postgres, certs, "require")) as p:
        context = ssl.create_default_context(cafile=str(certs.ca_file))
        context.set_alpn_protocols(["postgresql"])
        reader, writer = await asyncio.open_connection("127.0.0.1", p.port, ssl=context, server_hostname="localhost")
        writer.write(b"GET /sql HTTP/1.1\r\nHost: localhost\r\n\r\n")
        async with asyncio.timeout(10):
            data = await reader.read()
        writer.close()
        assert not data.startswith(b"HTTP/") and b"08P01" in data
        # SSLRequest, TLS, then an HTTP request: a Postgres client's TLS may carry HTTPS too (no ALPN).
        reader, writer = await asyncio.open_connection("127.0.0.1", p.port)
        writer.write(struct.pack("!ii", 8, 80877103))
        assert await reader.readexactly(1) == b"S"
        await writer.start_tls(ssl.create_default_context(cafile=str(certs.ca_file)), server_hostname="localhost")
        client = HttpClient(reader, writer)
        try:
            reply = await client.sql(p.dsn(), {"query": "SELECT 1 AS one"})
            assert (reply.status, reply.json["rows"]) == (200, [["1"]])
        finally:
            await client.close()


def test_pooler_up_neon_config_lines_work_as_printed(tmp_path: Path) -> None:
    with pooler_up(tmp_path / "data") as up:
        assert up.proc.stdout is not None
        lines = "".join(up.proc.stdout.readline() for _ in range(5))
        assert lines.startswith("// @neondatabase/serverless") and f"https://localhost:{up.port}/sql" in lines
        url = up.pooled.split("?")[0]  # the driver takes the URL as it is; its own TLS is the HTTPS/WSS
        assert_driver_works(run_neon_driver(up.pooled, lines, up.ca_file, tmp_path))
        assert_driver_works(run_neon_driver(url, lines, up.ca_file, tmp_path))
