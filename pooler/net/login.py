"""The login half of a client connection: startup packet, TLS, authentication, up to the welcome.

Theory of operation. A client connection (``pooler.net.client.ClientConnection``) goes ``STARTUP`` →
``AUTH`` → ``WELCOME`` → ``READY``. Until it is welcomed, its bytes go to its ``ClientLogin``: the startup
packet (or an SSLRequest, a direct-TLS ClientHello, a CancelRequest, or the first line of an HTTP request
on the pooled port), then the password exchange. The rules live in sans-IO cores (``pooler.wire.handshake``
reads the startup packet, ``pooler.wire.auth`` runs the exchange); this shell reads whole messages
(``pooler.wire.framing.MessageReader``), starts TLS (``pooler.net.tls``), and asks the process what only it
knows: the user's secret, whether the client may connect, where the client goes once authenticated.

It ends when the client is authenticated (``WELCOME``): the pool then welcomes it (``ClientConnection.welcome``)
and the connection drops its login. Bytes the client pipelined behind its login are handed to the
connection's data path, held for its session.

The login sees the connection through ``LoginConnection`` and the process through ``LoginHost``, generic in
the connection's type, so that this module imports nothing of the data path above it.
"""

from __future__ import annotations

import asyncio
import enum
import sys
from typing import TYPE_CHECKING, Generic, Protocol, TypeVar

from pooler.config import ADMIN_DATABASE, Config, DatabaseConfig, find_database
from pooler.core.parameters import TrackedParameters
from pooler.net import tls as tls_shell
from pooler.net.duck import as_protocol
from pooler.net.peer import ADMIN_PEER_USER, is_own_user, with_host
from pooler.net.pipe import PipeTransport
from pooler.net.server import WRITE_BUFFER_HIGH, WRITE_BUFFER_LOW
from pooler.wire import messages as pq
from pooler.wire.auth import AuthStep, AuthType, ClientAuth, login_refusal
from pooler.wire.framing import BadLengthError, MessageReader
from pooler.wire.handshake import Refusal, read_login

if TYPE_CHECKING:
    from pooler.net.tls import ClientTls

#: The largest authentication message we accept (SASL messages are a few hundred bytes).
MAX_AUTH_MESSAGE = 10_000
NO_PARAMS: dict[str, str] = {}  # shared and never mutated


class ClientState(enum.IntEnum):
    STARTUP = 0
    AUTH = 1
    WELCOME = 2
    READY = 3
    CLOSED = 4


class LoginConnection(Protocol):
    """The client connection as its login sees it (``pooler.net.client.ClientConnection`` is one)."""

    transport: asyncio.Transport | None
    state: ClientState
    direct: bool
    cleartext: bool  # ask for a cleartext password whatever auth_type says (the HTTP and WebSocket doors)
    http_ok: bool  # the first bytes may be an HTTP request
    user: str
    database: str
    db: DatabaseConfig | None
    startup_params: dict[str, str]
    tls: ClientTls | None

    def write(self, data: bytes) -> None: ...

    def fatal(self, sqlstate: str, message: str, *, hint: str | None = None, detail: str | None = None) -> None: ...

    def close(self) -> None: ...

    def connection_lost(self, exc: Exception | None) -> None: ...

    def pipelined(self, data: bytes) -> None:
        """Bytes the client sent behind its login (its first query): the session's, held until it begins."""
        ...


Conn = TypeVar("Conn", bound=LoginConnection)
Conn_contra = TypeVar("Conn_contra", bound=LoginConnection, contravariant=True)


class LoginHost(Protocol[Conn_contra]):
    """What a client's login needs from the process (``pooler.runtime.process.Pooler`` provides it)."""

    config: Config
    parameters: TrackedParameters
    tls: ClientTls | None  # TLS towards clients (pooler.runtime.tls); None: client_tls_sslmode = disable

    def client_disconnected(self, client: Conn_contra) -> None: ...

    def over_client_limit(self) -> bool: ...

    def admit_client(self, client: Conn_contra, db: DatabaseConfig) -> str | None: ...

    def cancel(self, key: tuple[int, int]) -> None: ...

    def lookup_secret(self, user: str) -> str | None: ...

    def auth_query_enabled(self, db: DatabaseConfig) -> bool: ...

    def auth_query_lookup(self, client: Conn_contra, db: DatabaseConfig, user: str) -> None: ...

    def admin_login(self, client: Conn_contra) -> None: ...

    def client_authenticated(self, client: Conn_contra, db: DatabaseConfig, step: AuthStep) -> None: ...

    def pooler_error(self, client: Conn_contra | None, sqlstate: str, message: str) -> None: ...

    def http_request(self, transport: asyncio.Transport, data: bytes) -> None:
        """A connection's first bytes ``data`` were an HTTP request: hand ``transport`` to the HTTP shell."""
        ...


class ClientLogin(Generic[Conn]):
    """One client's login: what it needs only until the client is authenticated."""

    __slots__ = ("auth", "conn", "host", "negotiate", "reader", "tls_direct", "tls_pending")

    def __init__(self, conn: Conn, host: LoginHost[Conn]) -> None:
        self.conn = conn
        self.host = host
        self.reader: MessageReader | None = None  # startup and authentication messages
        self.auth: ClientAuth | None = None
        self.negotiate = b""  # NegotiateProtocolVersion, sent ahead of the first authentication request
        self.tls_pending = False  # a TLS handshake is in progress
        self.tls_direct = False  # the TLS began with a ClientHello, not an SSLRequest (ALPN is checked)

    # --- startup and authentication -------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        """Bytes from a client that is not welcomed yet."""
        conn = self.conn
        reader = self.reader
        if reader is None:
            if (data and conn.http_ok and conn.state == ClientState.STARTUP and 0x41 <= data[0] <= 0x5A
                    and not self.tls_pending and self._alpn() != pq.ALPN_POSTGRESQL):
                # A startup packet starts with a zero byte, an HTTP method with A-Z; the same holds for the
                # first decrypted bytes after a TLS handshake (HTTPS, WSS), unless ALPN said "postgresql".
                self._switch_to_http(data)
                return
            reader = self.reader = MessageReader(MAX_AUTH_MESSAGE)
        reader.feed(data)
        if self.tls_pending:
            return  # decrypted bytes that came with the end of the handshake: read once it is done
        try:
            while True:
                if conn.state == ClientState.STARTUP:
                    if conn.tls is None and tls_shell.is_client_hello(reader.peek_type()):
                        record = tls_shell.first_record_size(reader.peek(tls_shell.TLS_RECORD_HEADER))
                        if record is None or len(reader) < record <= tls_shell.MAX_TLS_RECORD:
                            return  # the rest of the ClientHello is on its way
                        self._begin_tls(direct=True)  # Postgres 17's sslnegotiation=direct
                        return
                    packet = reader.next_startup_packet()
                    if packet is None:
                        return
                    self._startup(packet)
                elif conn.state == ClientState.AUTH and self.auth is not None:
                    kind = reader.peek_type()
                    if kind is None:
                        return
                    if kind != pq.PASSWORD:
                        conn.fatal("08P01", f"expected a password message, got message type {chr(kind)!r}")
                        return
                    message = reader.next_message()
                    if message is None:
                        return
                    self._auth_step(self.auth.receive(message[1]))
                else:
                    break
        except BadLengthError as exc:
            conn.fatal("08P01", f"invalid password message length {exc.length}")
            return
        except pq.ProtocolViolationError as exc:
            conn.fatal("08P01", str(exc))
            return
        if conn.state in (ClientState.WELCOME, ClientState.READY):
            self.reader = None  # the login is over: its buffer is not kept for the session
            rest = reader.take_rest()
            if rest and conn.cleartext and rest[0] == pq.PASSWORD and len(rest) >= pq.HEADER_SIZE:
                length = pq.read_int32(rest, 1)
                if len(rest) >= 1 + length:
                    rest = rest[1 + length :]  # a pipelined password that auth_type trust never asked for
            if rest:
                conn.pipelined(rest)  # its first query, behind the login (Neon's pipelined connect does so)

    def _switch_to_http(self, data: bytes) -> None:
        """The first bytes are an HTTP request (Neon's SQL over HTTP or a WebSocket upgrade): from here the
        connection belongs to the HTTP shell, and this object was never a client."""
        conn = self.conn
        transport = conn.transport
        conn.state = ClientState.CLOSED
        conn.transport = None
        self.host.client_disconnected(conn)
        if transport is not None:
            self.host.http_request(transport, data)

    def _startup(self, packet: bytes) -> None:
        conn = self.conn
        try:
            startup = pq.parse_startup_packet(packet)
        except pq.ProtocolViolationError as exc:
            conn.fatal("08P01", f"invalid startup packet: {exc}")
            return
        if self.tls_direct and self._alpn() != pq.ALPN_POSTGRESQL:
            # Checked here, not at the end of the handshake: an HTTPS client (ALPN http/1.1 or none) is told
            # apart by its first decrypted bytes; a Postgres client without ALPN is refused as Postgres does.
            conn.fatal("08P01", "received direct SSL connection request without ALPN protocol negotiation extension",
                       hint="direct TLS (sslnegotiation=direct) needs ALPN \"postgresql\"; use libpq 17 or newer")
            return
        if startup.code == pq.SSL_REQUEST_CODE and self._tls_offered():
            if self.reader is not None and len(self.reader):
                conn.fatal("08P01", "received unencrypted data after SSL request",
                           hint="this could be a man-in-the-middle attack; the client must wait for the answer")
                return
            self._begin_tls(direct=False)  # its "S" is sent once the TLS layer reads the connection
            return
        if startup.code in (pq.SSL_REQUEST_CODE, pq.GSSENC_REQUEST_CODE):
            conn.write(b"N")  # no TLS here: the client goes on in plaintext (or gives up, per sslmode)
            return
        if startup.cancel_key is not None:
            self.host.cancel(startup.cancel_key)
            conn.close()
            return
        if self.host.tls is not None and self.host.tls.required and self._plaintext_tcp():
            conn.fatal("08P01", "SSL required",
                       hint="client_tls_sslmode requires TLS: connect with sslmode=require (or stronger)")
            return
        if self.host.over_client_limit():
            # Refused here, after SSL negotiation, as Postgres and PgBouncer do: refused on accept, libpq
            # (sslmode=prefer) reports only "server sent an error response during SSL exchange".
            conn.fatal("53300", "no more connections allowed (max_client_conn)",
                       hint="raise max_client_conn, or close idle connections in the app")
            return
        settings = self.host.config.settings
        login = read_login(startup, self.host.parameters.canonical, settings.ignore_startup_parameters)
        if isinstance(login, Refusal):
            conn.fatal(login.sqlstate, login.message, hint=login.hint)
            return
        self.negotiate = login.negotiate
        user = conn.user = sys.intern(login.user)  # one string per name, not one per connection
        conn.database = sys.intern(login.database)
        tracked = login.tracked
        if settings.application_name_add_host and not conn.direct:
            peer = conn.transport.get_extra_info("peername") if conn.transport is not None else None
            tracked = {**tracked, "application_name": with_host(tracked.get("application_name"), peer)}
        conn.startup_params = self.host.parameters.shared(tracked)[0] if tracked else NO_PARAMS
        if conn.database == ADMIN_DATABASE:
            if user == ADMIN_PEER_USER and is_own_user(conn.transport):
                conn.state = ClientState.WELCOME  # PgBouncer's peer login: the pooler's own OS user, no password
                if self.negotiate:
                    conn.write(self.negotiate)
                conn.write(pq.AUTH_OK_MESSAGE)
                self.host.admin_login(conn)
                return
            # The admin console: authenticated like anyone (auth_file / auth_query), then handed over.
            conn.state = ClientState.AUTH
            self.begin_auth(settings.auth_type, self.host.lookup_secret(user))
            return
        db = find_database(self.host.config, conn.database)
        if db is None:
            # As PgBouncer: authenticate first, then say "no such database" (see _auth_step), so that
            # which databases exist is not told to whoever knocks.
            conn.state = ClientState.AUTH
            self.begin_auth(settings.auth_type, self.host.lookup_secret(user))
            return
        conn.db = db
        refusal = self.host.admit_client(conn, db)
        if refusal is not None:
            conn.fatal("08P01", refusal)  # PgBouncer's words and SQLSTATE
            return
        conn.state = ClientState.AUTH
        secret = self.host.lookup_secret(user)
        if secret is None and settings.auth_type is not AuthType.ANY and self.host.auth_query_enabled(db):
            self.host.auth_query_lookup(conn, db, user)
            return
        self.begin_auth(settings.auth_type, secret)

    def begin_auth(self, auth_type: AuthType, secret: str | None) -> None:
        """Start the exchange once the user's secret is known (possibly after an auth_query)."""
        conn = self.conn
        if conn.state != ClientState.AUTH:
            return
        if conn.cleartext and auth_type not in (AuthType.TRUST, AuthType.ANY):
            auth_type = AuthType.PLAIN  # checked against the same secret (plain, md5 or SCRAM verifier)
        # The admin console (no db entry) forces its own user, as PgBouncer's: any lets admin_users in.
        refusal = login_refusal(auth_type, secret, forced_user=conn.db is None or bool(conn.db.user))
        if refusal is not None:
            conn.fatal("08P01", refusal)
            return
        binding = conn.tls.channel_binding if conn.tls is not None else None
        self.auth = ClientAuth(auth_type, conn.user, secret, iterations=self.host.config.settings.scram_iterations,
                               channel_binding=binding)
        if self.negotiate:
            conn.write(self.negotiate)
        self._auth_step(self.auth.start())
        if self.reader is not None and len(self.reader) and conn.state == ClientState.AUTH:
            self.data_received(b"")

    # --- TLS (the contexts: pooler.runtime.tls; the handshake: pooler.net.tls) ------------------------

    def in_tls_handshake(self) -> bool:
        """A TLS handshake is in progress, or its ClientHello is still arriving (direct TLS): either way a
        Postgres message would only be garbage to the client."""
        if self.tls_pending:
            return True
        reader = self.reader
        return (reader is not None and self.conn.tls is None and self.conn.state == ClientState.STARTUP
                and tls_shell.is_client_hello(reader.peek_type()))

    def _tls_offered(self) -> bool:
        """TLS is on and this is a plaintext TCP connection (unix sockets never do TLS, as in PgBouncer)."""
        transport = self.conn.transport
        # A session carried inside an HTTP request or a WebSocket (pooler.net.pipe) has no TLS of its own: the
        # outer connection's TLS, if any, is what "SSL required" looks at.
        return (self.host.tls is not None and self.conn.tls is None and transport is not None
                and not isinstance(transport, PipeTransport) and not tls_shell.is_unix(transport))

    def _plaintext_tcp(self) -> bool:
        """This connection, or the HTTP/WebSocket connection carrying it, is TCP without TLS: what
        client_tls_sslmode = require refuses (a unix socket is exempt, as in PgBouncer)."""
        transport = self.conn.transport
        return (transport is not None and not tls_shell.is_unix(transport)
                and transport.get_extra_info("ssl_object") is None)

    def _alpn(self) -> str | None:
        """The ALPN protocol the TLS handshake selected; None without TLS or without ALPN."""
        transport = self.conn.transport
        ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
        return ssl_object.selected_alpn_protocol() if ssl_object is not None else None

    def _begin_tls(self, *, direct: bool) -> None:
        """Hand the connection to the TLS layer; the startup packet then comes again, decrypted."""
        tls = self.host.tls
        transport = self.conn.transport
        if tls is None or transport is None or tls_shell.is_unix(transport):
            self.host.pooler_error(self.conn, "08P01", "direct TLS connection attempted but TLS is not enabled "
                                   "(client_tls_sslmode = disable)")
            self.conn.close()
            return
        reader = self.reader
        already_read = reader.take_rest() if direct and reader is not None else b""
        self.tls_pending = True
        # Nothing more may reach data_received before the TLS layer takes over: the ClientHello that
        # follows our "S" belongs to it. start_tls resumes reading once it is in place.
        transport.pause_reading()
        tls_shell.spawn(self._tls_handshake(tls, transport, already_read, direct))

    async def _tls_handshake(self, tls: ClientTls, transport: asyncio.Transport, already_read: bytes,
                             direct: bool) -> None:
        conn = self.conn
        # client_login_timeout cuts a stalled handshake (the sweep, one reason for every slow login); the
        # TLS layer's own timeout is only the backstop, later, and 60 s when client_login_timeout is off.
        login_timeout = self.host.config.settings.client_login_timeout
        timeout = login_timeout + 5 if login_timeout else None
        try:
            upgraded = await tls_shell.accept(transport, as_protocol(conn), tls.context, already_read, timeout,
                                              answer=b"" if direct else b"S")
        except Exception as exc:  # ssl.SSLError, a reset, a timeout: the client goes, nobody else notices
            self.tls_pending = False
            if conn.state != ClientState.CLOSED:
                self.host.pooler_error(conn, "08P01", f"TLS handshake failed: {str(exc) or type(exc).__name__}")
            transport.close()
            conn.connection_lost(exc)
            return
        self.tls_pending = False
        conn.transport = upgraded
        conn.tls = tls
        if conn.state == ClientState.CLOSED:  # closed meanwhile (client_login_timeout, shutdown): the loop's
            upgraded.close()                  # TLS may still report a handshake that ended with the socket
            conn.connection_lost(None)
            return
        upgraded.set_write_buffer_limits(WRITE_BUFFER_HIGH, WRITE_BUFFER_LOW)
        self.tls_direct = direct
        # The decrypted stream starts afresh, in STARTUP with nothing consumed: its first bytes may be a
        # startup packet or an HTTP request (HTTPS, WSS), told apart as on a plaintext connection. Bytes that
        # came with the end of the handshake were kept in the reader: they go through that same check.
        reader, self.reader = self.reader, None
        rest = reader.take_rest() if reader is not None else b""
        if rest:
            self.data_received(rest)

    def _auth_step(self, step: AuthStep) -> None:
        conn = self.conn
        if step.send:
            conn.write(step.send)
        if not step.done:
            return
        self.auth = None  # the exchange's state (nonces, keys) is not kept for the whole session
        if not step.ok:
            self.host.pooler_error(conn, "28P01", "password authentication failed")
            conn.close()
            return
        conn.state = ClientState.WELCOME
        if conn.db is None:  # the admin console, or a database that does not exist
            if conn.database == ADMIN_DATABASE:
                self.host.admin_login(conn)
            else:
                conn.fatal("3D000", f"no such database: {conn.database}",
                           hint="add it to [databases] in the pooler config, or define a \"*\" fallback entry")
            return
        self.host.client_authenticated(conn, conn.db, step)

