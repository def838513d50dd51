"""TLS settings made into ``ssl.SSLContext`` objects, once per config: PgBouncer's names and meanings.

Why contexts are built here and not per connection: loading a key and a certificate chain costs
milliseconds, a handshake must not. ``ClientTls`` is the pooler acting as a TLS server (clients'
``sslmode``), ``ServerTls`` the pooler acting as a TLS client towards Postgres. Both are immutable and
rebuilt whole on reload, like the ``Config`` they come from; a bad file is a ``ConfigError`` naming the
setting, before anything changes.

The TLS itself is the stdlib ``ssl`` module on the event loop's own TLS support (``loop.start_tls``),
see pooler.net.tls; nothing here touches a socket.
"""

from __future__ import annotations

import hashlib
import ssl

from pooler.config import ConfigError, Settings, parse_protocols
from pooler.net.tls import ClientTls, ServerTls
from pooler.wire.messages import ALPN_HTTP_1_1, ALPN_POSTGRESQL

#: The channel binding type Postgres (and libpq, node-postgres) use with SCRAM-SHA-256-PLUS.
TLS_SERVER_END_POINT = "tls-server-end-point"

#: PgBouncer's cipher shortcuts that mean "OpenSSL's defaults".
_DEFAULT_CIPHERS = frozenset({"default", "secure", "fast", "normal", ""})



def tls_server_end_point(cert_der: bytes) -> bytes | None:
    """RFC 5929's ``tls-server-end-point`` data: the certificate hashed with its signature's hash
    (SHA-256 when that is MD5 or SHA-1). None when the signature has no hash (Ed25519/Ed448), for
    which the RFC defines nothing: Postgres then offers no channel binding either."""
    from cryptography import x509

    algorithm = x509.load_der_x509_certificate(cert_der).signature_hash_algorithm
    if algorithm is None:
        return None
    name = algorithm.name.lower()
    if name in ("md5", "sha1"):
        name = "sha256"
    try:
        return hashlib.new(name, cert_der).digest()
    except ValueError:
        return None


def _first_certificate_der(path: str) -> bytes:
    """The DER of the first certificate in a PEM file: the one a TLS server presents."""
    with open(path, encoding="ascii", errors="replace") as fh:
        text = fh.read()
    begin, end = "-----BEGIN CERTIFICATE-----", "-----END CERTIFICATE-----"
    start = text.find(begin)
    stop = text.find(end, start)
    if start < 0 or stop < 0:
        raise ValueError("no PEM certificate in it")
    return ssl.PEM_cert_to_DER_cert(text[start : stop + len(end)])


def _set_ciphers(context: ssl.SSLContext, ciphers: str, setting: str, source: str) -> None:
    value = ciphers.strip()
    if value.lower() in _DEFAULT_CIPHERS:
        return
    try:
        context.set_ciphers("ALL" if value.lower() == "all" else value)
    except ssl.SSLError:
        raise ConfigError(source, setting, f"OpenSSL accepts none of the ciphers in {value!r}") from None


def _set_protocols(context: ssl.SSLContext, value: str, setting: str, source: str) -> None:
    try:
        context.minimum_version, context.maximum_version = parse_protocols(value)
    except ValueError as exc:
        raise ConfigError(source, setting, str(exc)) from None


def client_tls(settings: Settings, source: str = "config") -> ClientTls | None:
    """The client-side TLS of ``settings``; None when ``client_tls_sslmode = disable``.

    Raises ConfigError when TLS is on without a usable key and certificate, or with a bad value.
    """
    mode = settings.client_tls_sslmode
    if mode == "disable":
        return None
    if not settings.client_tls_cert_file or not settings.client_tls_key_file:
        missing = "client_tls_cert_file" if not settings.client_tls_cert_file else "client_tls_key_file"
        raise ConfigError(source, missing, f"required when client_tls_sslmode = {mode}; set both "
                          "client_tls_cert_file and client_tls_key_file (PEM files)")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(settings.client_tls_cert_file, settings.client_tls_key_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(source, "client_tls_cert_file", f"cannot load the certificate and key "
                          f"({settings.client_tls_cert_file}, {settings.client_tls_key_file}): "
                          f"{getattr(exc, 'strerror', None) or exc}") from None
    _set_protocols(context, settings.client_tls_protocols, "client_tls_protocols", source)
    _set_ciphers(context, settings.client_tls_ciphers, "client_tls_ciphers", source)
    # Offered always; Postgres 17's direct TLS requires "postgresql", and a client on the SSLRequest path
    # that offers ALPN must get "postgresql" (or none). "http/1.1": the pooled port also serves HTTPS and
    # WSS (Neon's SQL over HTTP and WebSocket), whose clients offer it or no ALPN at all; which protocol
    # the connection speaks is then told by its first decrypted bytes (pooler.net.client).
    context.set_alpn_protocols([ALPN_POSTGRESQL, ALPN_HTTP_1_1])
    if mode in ("verify-ca", "verify-full"):
        if not settings.client_tls_ca_file:
            raise ConfigError(source, "client_tls_ca_file", f"required when client_tls_sslmode = {mode} "
                              "(the root certificate that signs the clients' certificates)")
        context.verify_mode = ssl.CERT_REQUIRED
    else:
        context.verify_mode = ssl.CERT_NONE  # PgBouncer: a client certificate is not validated
    if settings.client_tls_ca_file:
        try:
            context.load_verify_locations(settings.client_tls_ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(source, "client_tls_ca_file",
                              f"cannot load {settings.client_tls_ca_file}: {getattr(exc, 'strerror', None) or exc}"
                              ) from None
    try:
        binding = tls_server_end_point(_first_certificate_der(settings.client_tls_cert_file))
    except (OSError, ValueError) as exc:
        raise ConfigError(source, "client_tls_cert_file", f"cannot read its certificate: {exc}") from None
    return ClientTls(context=context, required=mode in ("require", "verify-ca", "verify-full"),
                     channel_binding=binding)


def server_tls(settings: Settings, source: str = "config") -> ServerTls | None:
    """The server-side TLS of ``settings``; None when ``server_tls_sslmode = disable``."""
    mode = settings.server_tls_sslmode
    if mode == "disable":
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if mode in ("verify-ca", "verify-full"):
        context.check_hostname = mode == "verify-full"
        context.verify_mode = ssl.CERT_REQUIRED
        try:
            if settings.server_tls_ca_file:
                context.load_verify_locations(settings.server_tls_ca_file)
            else:
                context.load_default_certs()  # a cloud Postgres signed by a public CA
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(source, "server_tls_ca_file",
                              f"cannot load {settings.server_tls_ca_file}: {getattr(exc, 'strerror', None) or exc}"
                              ) from None
    else:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # allow / prefer / require: encrypted, not authenticated
    if settings.server_tls_cert_file or settings.server_tls_key_file:
        try:
            context.load_cert_chain(settings.server_tls_cert_file, settings.server_tls_key_file or None)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(source, "server_tls_cert_file", f"cannot load the certificate and key: "
                              f"{getattr(exc, 'strerror', None) or exc}") from None
    _set_protocols(context, settings.server_tls_protocols, "server_tls_protocols", source)
    _set_ciphers(context, settings.server_tls_ciphers, "server_tls_ciphers", source)
    return ServerTls(context=context, mode=mode, required=mode in ("require", "verify-ca", "verify-full"))


def tls13_ciphers_warning(settings: Settings) -> list[str]:
    """Notes for the start-up log: Python's ssl module cannot restrict TLS 1.3 suites (OpenSSL's
    SSL_CTX_set_ciphersuites has no binding), so a non-empty ``*_tls13_ciphers`` is not applied."""
    notes = []
    for name in ("client_tls13_ciphers", "server_tls13_ciphers"):
        if getattr(settings, name):
            notes.append(f"{name}: cannot be applied (Python's ssl module has no TLS 1.3 cipher suite "
                         "setting); OpenSSL's default TLS 1.3 suites are used")
    return notes
