"""A local certificate authority and a server certificate for ``pooler up``, made once with ``cryptography``.

Why a CA and not one self-signed certificate: ``sslmode=verify-full`` (and Node.js, which verifies by
default) need a root to trust that is not the server certificate itself, and a CA file the developer
can hand to their tools once survives a re-issued server certificate. Both are kept in the data
directory, so the printed URLs and the CA path stay valid across restarts. EC P-256 keys: fast
handshakes; SHA-256 signatures, so SCRAM channel binding hashes the certificate with SHA-256.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

#: Names the server certificate is valid for: what ``pooler up``'s URLs and local clients use.
LOCAL_NAMES = ("localhost",)
LOCAL_ADDRESSES = ("127.0.0.1", "::1")
_CA_YEARS = 10
_SERVER_DAYS = 825  # the longest validity Apple's and browsers' rules accept for a server certificate
_RENEW_BEFORE = datetime.timedelta(days=30)


@dataclass(frozen=True, slots=True)
class LocalCertificates:
    """Paths of the files ``pooler up`` uses: the CA to trust, and the server's certificate and key."""

    ca_file: Path
    cert_file: Path
    key_file: Path


def ensure_local_certificates(directory: Path) -> LocalCertificates:
    """The CA and server certificate in ``directory`` (``ca.crt``, ``server.crt``, ``server.key``), made on
    first use; the server certificate is re-issued by the same CA when it is about to expire or unreadable."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = LocalCertificates(directory / "ca.crt", directory / "server.crt", directory / "server.key")
    ca_key_file = directory / "ca.key"
    now = datetime.datetime.now(datetime.UTC)
    if not (paths.ca_file.exists() and ca_key_file.exists()):
        new_key, ca_cert = _make_ca(now)
        _write(ca_key_file, new_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                 serialization.NoEncryption()), private=True)
        _write(paths.ca_file, ca_cert.public_bytes(serialization.Encoding.PEM))
        for stale in (paths.cert_file, paths.key_file):
            stale.unlink(missing_ok=True)
    if paths.cert_file.exists() and paths.key_file.exists():
        try:
            current = x509.load_pem_x509_certificate(paths.cert_file.read_bytes())
            if current.not_valid_after_utc - now > _RENEW_BEFORE:
                return paths
        except ValueError:
            pass
    ca_cert = x509.load_pem_x509_certificate(paths.ca_file.read_bytes())
    ca_key = serialization.load_pem_private_key(ca_key_file.read_bytes(), password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):  # e.g. a hand-made CA put in place
        raise ValueError(f"{ca_key_file} is not the EC key pooler made; delete {directory} to make a new CA")
    key, cert = _make_server_certificate(now, ca_cert, ca_key)
    _write(paths.key_file, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                             serialization.NoEncryption()), private=True)
    _write(paths.cert_file, cert.public_bytes(serialization.Encoding.PEM))
    return paths


def _write(path: Path, data: bytes, *, private: bool = False) -> None:
    """Write atomically (a crash never leaves half a key), private files readable by the owner only."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


def _make_ca(now: datetime.datetime) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pooler local CA"),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "pooler up (this machine only)")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=365 * _CA_YEARS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _make_server_certificate(
    now: datetime.datetime, ca_cert: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [x509.DNSName(n) for n in LOCAL_NAMES]
    names += [x509.IPAddress(ipaddress.ip_address(a)) for a in LOCAL_ADDRESSES]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=_SERVER_DAYS))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert
