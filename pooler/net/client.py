"""One client connection to the pooler: startup, authentication, then the client→server data path.

Theory of operation. A client goes ``STARTUP`` → ``AUTH`` → ``WELCOME`` (waiting for its pool to know
the server's parameters, or for its dedicated backend on the direct endpoint) → ``READY``. In READY
it is either linked to a server (bytes are scanned for message headers and forwarded whole) or not
(bytes are held until its pool hands it one; a held burst larger than ``HOLD_LIMIT`` pauses reading).

The scanner counts, per forwarded message, what makes the linked server unreleasable: each Query,
Sync and FunctionCall owes a ReadyForQuery; any other extended-protocol message leaves the server
"unsynced" until the next Sync; CopyDone/CopyFail end a COPY FROM STDIN. The server side pops those
debts; when none is left and the transaction is idle, the server goes back to the pool.
"""

from __future__ import annotations

import asyncio
import enum
import struct
import sys
from bisect import bisect_left
from typing import TYPE_CHECKING, cast

from pooler.config import ADMIN_DATABASE, DatabaseConfig, PoolMode, find_database
from pooler.core.prepared import (
    CLOSE_COMPLETE,
    DESCRIBE_STATEMENT,
    FORWARD,
    PARSE_COMPLETE,
    SKIP,
    PreparedStatement,
    did_not_exist,
    name_in_use,
    statement_name,
)
from pooler.core.session_state import Finding, SessionStateChecker
from pooler.core.stats import LATENCY_BUCKETS, PoolStats
from pooler.log import log
from pooler.net import tls as tls_shell
from pooler.net.server import WRITE_BUFFER_HIGH, WRITE_BUFFER_LOW, ServerConnection, ServerState
from pooler.wire import messages as pq
from pooler.wire.auth import AuthStep, AuthType, ClientAuth

if TYPE_CHECKING:
    from pooler.core.pool import Pool
    from pooler.runtime.process import Pooler
    from pooler.runtime.tls import ClientTls

_unpack_length = struct.Struct("!i").unpack_from
_SESSION_STATE_CHECKER = SessionStateChecker()  # one parse cache for the whole pooler
_NO_POOL_STATS = PoolStats()  # counts nothing anyone reads: a client's bytes before it has a pool
_NO_PARAMS: dict[str, str] = {}  # shared and never mutated

#: Bytes a client may send while it waits for a server before we stop reading from it.
HOLD_LIMIT = 256 * 1024
#: The largest authentication message we accept (SASL messages are a few hundred bytes).
MAX_AUTH_MESSAGE = 10_000

#: Startup parameters accepted without configuration (PgBouncer's list) besides tracked GUCs.
_STARTUP_KEYS = frozenset({"user", "database", "replication", "options"})
#: GUCs tracked per client and re-applied to whichever backend it lands on (canonical spelling).
TRACKED_PARAMETERS = ("client_encoding", "DateStyle", "TimeZone", "standard_conforming_strings", "application_name")


class ClientState(enum.IntEnum):
    STARTUP = 0
    AUTH = 1
    WELCOME = 2
    READY = 3
    CLOSED = 4


class ClientConnection(asyncio.Protocol):
    """A connection from an application to the pooler."""

    __slots__ = (
        "_buf",
        "_held",
        "_negotiate",
        "_reading_paused",
        "_skip",
        "_tls_pending",
        "auth",
        "connected_at",
        "database",
        "db",
        "direct",
        "id",
        "key",
        "last_active",
        "max_packet",
        "params",
        "params_key",
        "pool",
        "pool_mode",
        "pooler",
        "remote",
        "server",
        "startup_params",
        "state",
        "state_checker",
        "state_refuse",
        "state_warned",
        "statements",
        "stats",
        "tls",
        "track_statements",
        "transport",
        "user",
        "wait_started",
        "waiting",
    )

    def __init__(self, pooler: Pooler, *, direct: bool = False) -> None:
        self.pooler = pooler
        self.direct = direct
        self.transport: asyncio.Transport | None = None
        self.state = ClientState.STARTUP
        self.id = pooler.next_client_id()
        self.key = pooler.new_cancel_key()
        self.remote = ""
        self.user = ""
        self.database = ""
        self.db: DatabaseConfig | None = None
        self.pool: Pool | None = None
        self.pool_mode = PoolMode.TRANSACTION
        self.server: ServerConnection | None = None
        self.auth: ClientAuth | None = None
        self.params: dict[str, str] = {}
        self.params_key: tuple[str | None, ...] = ()
        self.stats = _NO_POOL_STATS  # the pool's, once logged in
        self.statements: dict[bytes, PreparedStatement] = {}  # this client's prepared statement names
        self.track_statements = False  # named statements are rewritten (transaction/statement pooling)
        # Session-state checks (pooled endpoint, transaction/statement mode): see pooler.core.session_state.
        self.state_checker: SessionStateChecker | None = None
        self.state_refuse = False  # session_state_check = error
        self.state_warned: set[str] | None = None  # kinds this client was already warned about
        self.startup_params: dict[str, str] = {}
        self.waiting = False
        self.max_packet = pooler.config.settings.max_packet_size
        now = pooler.clock()
        self.connected_at = now
        self.last_active = now
        self.wait_started = 0.0
        self._buf = bytearray()
        # Immutable on purpose: b"" + data is data itself in CPython, so the usual case (one whole
        # message arrives while no server is linked) is held and later forwarded without a copy.
        self._held = b""
        self._skip = 0
        self._negotiate = b""
        self._reading_paused = False
        self.tls: ClientTls | None = None  # the TLS this connection was accepted with; None: plaintext
        self._tls_pending = False  # a TLS handshake is in progress

    # --- asyncio.Protocol -----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        transport.set_write_buffer_limits(WRITE_BUFFER_HIGH, WRITE_BUFFER_LOW)
        peer = transport.get_extra_info("peername")
        self.remote = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer or "unix")
        self.pooler.client_connected(self)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.state == ClientState.CLOSED and self.transport is None:
            return
        self.state = ClientState.CLOSED
        self.transport = None
        self._detach("client disconnected")
        self.pooler.client_disconnected(self)

    def data_received(self, data: bytes) -> None:
        if self.state == ClientState.READY:
            server = self.server
            if server is not None:
                self.forward(data, server)
            else:
                self._hold(data)
            return
        if self.state == ClientState.CLOSED:
            return
        self._handshake_data(data)

    def pause_writing(self) -> None:
        server = self.server
        if server is not None:
            server.pause_reading()

    def resume_writing(self) -> None:
        server = self.server
        if server is not None:
            server.resume_reading()

    # --- output ---------------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        transport = self.transport
        if transport is not None:
            transport.write(data)

    def fatal(self, sqlstate: str, message: str, *, hint: str | None = None, detail: str | None = None) -> None:
        """Send a FATAL error naming the cause, log it, and close this connection."""
        self.pooler.pooler_error(self, sqlstate, message)
        if not self._tls_pending:  # mid-handshake, a Postgres message would only be garbage to TLS
            self.write(pq.error_response(sqlstate, message, severity="FATAL", hint=hint, detail=detail))
        self.close()

    def close(self) -> None:
        transport = self.transport
        if transport is not None and self.state != ClientState.CLOSED:
            self.state = ClientState.CLOSED
            transport.close()

    def pause_reading(self) -> None:
        if not self._reading_paused and self.transport is not None:
            self._reading_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self._reading_paused and self.transport is not None:
            self._reading_paused = False
            self.transport.resume_reading()

    # --- the data path ----------------------------------------------------------------------------

    def forward(self, data: bytes, server: ServerConnection) -> None:
        """Scan ``data`` for message headers, account for what the server now owes, and send it."""
        if self._held:
            data = self._held + data
            self._held = b""
        n = len(data)
        pos = self._skip
        transport = server.transport
        if transport is None:
            return
        if pos >= n:
            self._skip = pos - n
            transport.write(data)
            return
        self.stats.received += n
        pending = server.pending
        was_idle = not pending
        unpack = _unpack_length
        max_packet = self.max_packet
        track = self.track_statements
        parts: list[bytes] | None = None  # set when a message is rewritten or dropped
        sent_from = 0  # bytes before this offset are already in parts
        while pos + 5 <= n:
            kind = data[pos]
            length = unpack(data, pos + 1)[0]
            if length < 4 or length > max_packet:
                if parts is not None:
                    parts.append(data[sent_from:pos])
                    transport.write(b"".join(parts))
                elif pos:
                    transport.write(data[:pos])
                self._bad_length(kind, length)
                return
            end = pos + 1 + length
            if kind in (pq.QUERY, pq.FUNCTION_CALL):
                checker = self.state_checker
                if kind == pq.QUERY and checker is not None:
                    if end > n:
                        break  # checked whole: wait for the rest of it
                    findings = checker.check(data[pos + 5 : end - 1].decode("utf-8", "replace"),
                                             server.tx_status != pq.TX_IDLE)
                    refusal = self._session_state(findings, server) if findings else None
                    if refusal is not None:
                        if parts is None:
                            parts = []
                        parts.append(data[sent_from:pos])
                        parts.append(refusal)  # Postgres raises the refusal: order and tx state stay right
                        sent_from = end
                pending.append(kind)
                server.unsynced = False
            elif kind == pq.SYNC:
                if not server.copy_in:
                    pending.append(server.end_segment() if track else kind)
                server.unsynced = False
            elif kind == pq.COPY_DATA:
                pass
            elif kind in (pq.COPY_DONE, pq.COPY_FAIL):
                server.copy_in = False
            elif kind == pq.TERMINATE:
                if pos:
                    transport.write(data[:pos])
                self.close()
                return
            else:
                server.unsynced = True
                segment = server.open_segment
                if segment is not None and segment.dropping and kind != pq.FLUSH:  # refused earlier in it
                    if end > n:
                        break  # dropped whole: wait for the rest of it
                    if parts is None:
                        parts = []
                    parts.append(data[sent_from:pos])
                    sent_from = pos = end
                    continue
                if kind == pq.PARSE and self.state_checker is not None:
                    if end > n:
                        break  # checked whole: wait for the rest of it
                    name_end = data.find(b"\x00", pos + 5, end)
                    query_end = data.find(b"\x00", name_end + 1, end)
                    findings = self.state_checker.check(
                        data[name_end + 1 : query_end].decode("utf-8", "replace"), server.tx_status != pq.TX_IDLE
                    ) if name_end > 0 and query_end > 0 else ()
                    if findings and self._session_state(findings, server, extended=True) is not None:
                        if parts is None:
                            parts = []
                        parts.append(data[sent_from:pos])  # the Parse is refused in its place
                        sent_from = pos = end
                        continue
                if track and kind != pq.FLUSH:
                    if kind == pq.EXECUTE:
                        server.record(kind)
                    else:
                        span = statement_name(kind, data, pos, min(end, n))
                        if span is None or (span[1] > span[0] and end > n):
                            break  # a named message is rewritten whole: wait for the rest of it
                        if span[1] > span[0]:
                            if parts is None:
                                parts = []
                            parts.append(data[sent_from:pos])
                            parts.extend(self._named_statement(kind, data, pos, end, span=span, server=server))
                            sent_from = end
                        elif kind == pq.DESCRIBE and data[pos + 5] == ord("S"):
                            server.record(DESCRIBE_STATEMENT)
                        else:
                            server.record(kind)
            pos = end
        if pos > n:
            self._skip = pos - n
            stop = n
        else:
            self._skip = 0
            stop = pos
        if parts is not None:
            parts.append(data[sent_from:stop])
            transport.write(b"".join(parts))
            if stop < n:
                self._held += data[stop:]
        elif stop == n:
            transport.write(data)
        else:
            if stop:
                transport.write(data[:stop])
            self._held += data[stop:]
        if was_idle and pending:
            now = server.request_started = self.pooler.clock()
            if server.tx_status == pq.TX_IDLE:
                server.xact_started = now

    def _session_state(
        self, findings: tuple[Finding, ...], server: ServerConnection, *, extended: bool = False
    ) -> bytes | None:
        """Warn about (or refuse) SQL whose effect outlives the transaction; once per kind per connection.

        Returns what to send in place of a refused simple Query (a DO block raising the refusal, so that
        Postgres reports it with the right transaction status); a refused Parse is answered here.
        """
        counts = self.stats.session_state
        for finding in findings:
            counts[finding.kind] = counts.get(finding.kind, 0) + 1
        first = findings[0]
        message = f"{first.statement} does not survive transaction pooling: {first.why}"
        if self.state_refuse:
            self.pooler.pooler_error(self, "0A000", message)
            if extended:
                server.synthesize(pq.PARSE, pq.error_response("0A000", message, hint=first.fix), refuse=True)
                return b""
            return pq.query(
                "DO $pooler$ BEGIN RAISE EXCEPTION USING ERRCODE = '0A000', "
                f"MESSAGE = {_quote(message)}, HINT = {_quote(first.fix)}; END $pooler$"
            )
        if self.state_warned is None:
            self.state_warned = set()
        for finding in findings:
            if finding.kind in self.state_warned:
                continue
            self.state_warned.add(finding.kind)
            text = f"{finding.statement} does not survive transaction pooling: {finding.why}"
            self.write(pq.notice_response(text, sqlstate="01000", severity="WARNING", hint=finding.fix))
            log.warning("session state", kind=str(finding.kind), statement=finding.statement, client=self.id,
                        remote=self.remote, database=self.database, user=self.user)
        return None

    def _named_statement(
        self, kind: int, data: bytes, pos: int, end: int, *, span: tuple[int, int], server: ServerConnection
    ) -> list[bytes]:
        """A Parse/Bind/Describe/Close of a named statement: what to send the server in its place."""
        name = data[span[0] : span[1]]
        if kind == pq.PARSE:
            self.stats.client_parse_count += 1
            if name in self.statements:
                server.synthesize(pq.PARSE, name_in_use(name), refuse=True)
                return []
            statement = self.pooler.statements.get(data[span[1] + 1 : end])
            self.statements[name] = statement
            if statement in server.prepared:
                server.use(statement)
                server.synthesize(pq.PARSE, PARSE_COMPLETE)
                return []
            return server.prepare(statement, FORWARD, name, self.pooler.config.settings.max_prepared_statements)
        if kind == pq.CLOSE:
            self.statements.pop(name, None)
            server.synthesize(pq.CLOSE, CLOSE_COMPLETE)
            return []
        known = self.statements.get(name)
        if known is None:
            server.synthesize(kind, did_not_exist(name), refuse=True)
            return []
        statement = known
        out: list[bytes] = []
        if statement in server.prepared:
            server.use(statement)
        else:  # prepared by this client on another server (or evicted here): prepare it first, quietly
            out = server.prepare(statement, SKIP, None, self.pooler.config.settings.max_prepared_statements)
        if kind == pq.BIND:
            self.stats.bind_count += 1
            server.record(kind)
            head, tail = data[pos + 5 : span[0]], data[span[1] : end]
        else:
            server.record(DESCRIBE_STATEMENT)
            head, tail = b"S", b"\x00"
        out.append(pq.build(bytes((kind,)), head + statement.name + tail))
        return out

    def _hold(self, data: bytes) -> None:
        """Keep bytes that arrived while no server is linked; ask the pool for one once a message starts."""
        held = self._held = self._held + data
        if len(held) < 5:
            return
        if held[0] == pq.TERMINATE:
            self.close()
            return
        if len(held) > HOLD_LIMIT:
            self.pause_reading()
        if not self.waiting and self.pool is not None:
            self.waiting = True
            self.wait_started = self.pooler.clock()
            self.pool.request(self)

    def _bad_length(self, kind: int, length: int) -> None:
        if length < 4:
            self.fatal("08P01", f"invalid message length {length} for message type {chr(kind)!r}")
        else:
            self.fatal(
                "08P01",
                f"message of {length} bytes exceeds max_packet_size ({self.max_packet})",
                hint="raise max_packet_size in the pooler config, or send smaller messages",
            )

    # --- linking to servers (called by the pool) --------------------------------------------------

    def link(self, server: ServerConnection, now: float) -> None:
        """The pool hands us a server (at ``now``): align its session parameters, send what we hold."""
        stats = self.stats
        stats.server_assignment_count += 1
        if self.waiting:
            self.waiting = False
            waited = now - self.wait_started
            hist = stats.wait_hist
            hist.counts[bisect_left(LATENCY_BUCKETS, waited)] += 1
            hist.total += waited
        self.server = server
        server.client = self
        server.state = ServerState.ACTIVE
        if server.params_key != self.params_key:
            self._sync_parameters(server)
        if self._held:
            self.forward(b"", server)
        if self._reading_paused:
            self.resume_reading()

    def _sync_parameters(self, server: ServerConnection) -> None:
        """Send one SET for every tracked value in which the server differs from this client."""
        stale = [(k, v) for k, v in self.params.items() if server.params.get(k) != v]
        if stale:
            server.run_internal(";".join(f"SET {k} = {_quote(v)}" for k, v in stale))

    def server_ready_for_query(self, server: ServerConnection) -> None:
        """The server owes nothing: release it if this pool mode allows and it is clean."""
        if server.tx_status != pq.TX_IDLE:
            server.last_used = self.pooler.clock()  # idle in a transaction from now on (idle_transaction_timeout)
        mode = self.pool_mode
        if mode == PoolMode.SESSION or self.direct or self._skip:
            return
        if server.is_clean():
            self._unlink(server)
            now = self.last_active = self.pooler.clock()
            assert self.pool is not None
            self.pool.release(server, now=now)
            if len(self._held) >= 5:
                self._hold(b"")
        elif mode == PoolMode.STATEMENT and server.tx_status != pq.TX_IDLE:
            self.fatal("08P01", "transaction blocks not allowed in statement pooling mode",
                       hint="use transaction pool_mode, or the direct endpoint, for multi-statement transactions")

    def _unlink(self, server: ServerConnection) -> None:
        server.client = None
        self.server = None
        if server.reading_paused:  # paused for our slow reading: the next client must not inherit that
            server.resume_reading()

    def server_lost(self, server: ServerConnection) -> None:
        """Our server died while linked: the transaction is gone, so is this session."""
        self.server = None
        if server.fatal_seen:
            self.close()  # Postgres already told the client why
            return
        self.fatal(
            "08006",
            f"server conn crashed? {server.close_reason}; the transaction was lost",
            hint="reconnect and retry; the pooler has replaced the backend",
        )

    def _detach(self, reason: str) -> None:
        """The client is gone: return or clean its server, leave any queue."""
        pool = self.pool
        if pool is None:
            return
        if self.waiting:
            self.waiting = False
            pool.remove_waiter(self)
        server = self.server
        if server is None:
            return
        self._unlink(server)
        pool.client_left_server(server, self._skip != 0, reason)

    # --- startup and authentication -------------------------------------------------------------

    def _handshake_data(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        if self._tls_pending:
            return  # decrypted bytes that came with the end of the handshake: read once it is done
        while True:
            if self.state == ClientState.STARTUP:
                if self.tls is None and tls_shell.is_client_hello(buf):
                    self._begin_tls(direct=True)  # Postgres 17's sslnegotiation=direct
                    return
                if len(buf) < 4:
                    return
                length = pq.read_int32(buf)
                if length < 8 or length > pq.MAX_STARTUP_PACKET:
                    self.fatal("08P01", f"invalid length of startup packet ({length} bytes)")
                    return
                if len(buf) < length:
                    return
                packet = bytes(buf[:length])
                del buf[:length]
                self._startup(packet)
            elif self.state == ClientState.AUTH and self.auth is not None:
                if len(buf) < 5:
                    return
                kind = buf[0]
                length = pq.read_int32(buf, 1)
                if kind != pq.PASSWORD:
                    self.fatal("08P01", f"expected a password message, got message type {chr(kind)!r}")
                    return
                if length < 4 or length > MAX_AUTH_MESSAGE:
                    self.fatal("08P01", f"invalid password message length {length}")
                    return
                if len(buf) < 1 + length:
                    return
                payload = bytes(buf[5 : 1 + length])
                del buf[: 1 + length]
                self._auth_step(self.auth.receive(payload))
            else:
                break
        if buf and self.state in (ClientState.WELCOME, ClientState.READY):
            # The client pipelined its first query behind the login (Neon's pipelined connect does).
            self._held += bytes(buf)
            buf.clear()
            if self.state == ClientState.READY and self.server is None:
                self._hold(b"")

    def _startup(self, packet: bytes) -> None:
        try:
            startup = pq.parse_startup_packet(packet)
        except pq.ProtocolViolationError as exc:
            self.fatal("08P01", f"invalid startup packet: {exc}")
            return
        if startup.code == pq.SSL_REQUEST_CODE and self._tls_offered():
            if self._buf:
                self.fatal("08P01", "received unencrypted data after SSL request",
                           hint="this could be a man-in-the-middle attack; the client must wait for the answer")
                return
            self.write(b"S")
            self._begin_tls(direct=False)
            return
        if startup.code in (pq.SSL_REQUEST_CODE, pq.GSSENC_REQUEST_CODE):
            self.write(b"N")  # no TLS here: the client goes on in plaintext (or gives up, per sslmode)
            return
        if startup.cancel_key is not None:
            self.pooler.cancel(startup.cancel_key)
            self.close()
            return
        if self.tls is None and self.pooler.tls is not None and self.pooler.tls.required and self._tls_offered():
            self.fatal("08P01", "SSL required",
                       hint="client_tls_sslmode requires TLS: connect with sslmode=require (or stronger)")
            return
        if self.pooler.over_client_limit():
            # Refused here, after SSL negotiation, as Postgres and PgBouncer do: refused on accept, libpq
            # (sslmode=prefer) reports only "server sent an error response during SSL exchange".
            self.fatal("53300", "no more connections allowed (max_client_conn)",
                       hint="raise max_client_conn, or close idle connections in the app")
            return
        if startup.major != 3:
            self.fatal(
                "0A000",
                f"unsupported frontend protocol {startup.major}.{startup.minor}: server supports 3.0 to 3.0",
            )
            return
        params = startup.params
        unsupported_options = [k for k in params if k.startswith("_pq_.")]
        if startup.minor > 0 or unsupported_options:
            self._negotiate = pq.negotiate_protocol_version(pq.PROTOCOL_3_0, unsupported_options)
        user = params.get("user", "")
        if not user:
            self.fatal("28000", "no PostgreSQL user name specified in startup packet")
            return
        self.user = sys.intern(user)  # one string per name, not one per connection
        self.database = sys.intern(params.get("database") or user)
        if not self._check_startup_parameters(params):
            return
        settings = self.pooler.config.settings
        if self.database == ADMIN_DATABASE:
            # The admin console: authenticated like anyone (auth_file / auth_query), then handed over.
            self.state = ClientState.AUTH
            self.begin_auth(settings.auth_type, self.pooler.lookup_secret(user))
            return
        db = find_database(self.pooler.config, self.database)
        if db is None:
            self.fatal("3D000", f"no such database: {self.database}",
                       hint="add it to [databases] in the pooler config, or define a \"*\" fallback entry")
            return
        self.db = db
        self.state = ClientState.AUTH
        secret = self.pooler.lookup_secret(user)
        if secret is None and self.pooler.auth_query_enabled(db):
            self.pooler.auth_query_lookup(self, db, user)
            return
        self.begin_auth(settings.auth_type, secret)

    def begin_auth(self, auth_type: AuthType, secret: str | None) -> None:
        """Start the exchange once the user's secret is known (possibly after an auth_query)."""
        if self.state != ClientState.AUTH:
            return
        binding = self.tls.channel_binding if self.tls is not None else None
        self.auth = ClientAuth(auth_type, self.user, secret, channel_binding=binding)
        if self._negotiate:
            self.write(self._negotiate)
        self._auth_step(self.auth.start())
        if self._buf and self.state == ClientState.AUTH:
            self._handshake_data(b"")

    # --- TLS (the contexts: pooler.runtime.tls; the handshake: pooler.net.tls) ------------------------

    def _tls_offered(self) -> bool:
        """TLS is on and this is a plaintext TCP connection (unix sockets never do TLS, as in PgBouncer)."""
        transport = self.transport
        return (self.pooler.tls is not None and self.tls is None and transport is not None
                and not tls_shell.is_unix(transport))

    def _begin_tls(self, *, direct: bool) -> None:
        """Hand the connection to the TLS layer; the startup packet then comes again, decrypted."""
        tls = self.pooler.tls
        transport = self.transport
        if tls is None or transport is None or tls_shell.is_unix(transport):
            self.pooler.pooler_error(self, "08P01", "direct TLS connection attempted but TLS is not enabled "
                                     "(client_tls_sslmode = disable)")
            self.close()
            return
        already_read = bytes(self._buf) if direct else b""
        self._buf.clear()
        self._tls_pending = True
        # Nothing more may reach data_received before the TLS layer takes over: the ClientHello that
        # follows our "S" belongs to it. start_tls resumes reading once it is in place.
        transport.pause_reading()
        tls_shell.spawn(self._tls_handshake(tls, transport, already_read, direct))

    async def _tls_handshake(self, tls: ClientTls, transport: asyncio.Transport, already_read: bytes,
                             direct: bool) -> None:
        timeout = self.pooler.config.settings.client_login_timeout or None
        try:
            upgraded = await tls_shell.accept(transport, self, tls.context, already_read, timeout)
        except Exception as exc:  # ssl.SSLError, a reset, a timeout: the client goes, nobody else notices
            self._tls_pending = False
            if self.state != ClientState.CLOSED:
                self.pooler.pooler_error(self, "08P01", f"TLS handshake failed: {exc or type(exc).__name__}")
            transport.close()
            self.connection_lost(exc)
            return
        self._tls_pending = False
        self.transport = upgraded
        self.tls = tls
        if self.state == ClientState.CLOSED:
            upgraded.close()
            return
        upgraded.set_write_buffer_limits(WRITE_BUFFER_HIGH, WRITE_BUFFER_LOW)
        ssl_object = upgraded.get_extra_info("ssl_object")
        if direct and (ssl_object is None or ssl_object.selected_alpn_protocol() != tls_shell.ALPN_POSTGRESQL):
            self.fatal("08P01", "received direct SSL connection request without ALPN protocol negotiation extension",
                       hint="direct TLS (sslnegotiation=direct) needs ALPN \"postgresql\"; use libpq 17 or newer")
            return
        self._handshake_data(b"")

    def _check_startup_parameters(self, params: dict[str, str]) -> bool:
        settings = self.pooler.config.settings
        tracked = self.pooler.tracked_parameters
        ignored = settings.ignore_startup_parameters
        startup: dict[str, str] = {}
        for key, value in params.items():
            canonical = tracked.get(key.lower())
            if canonical is not None:
                startup[canonical] = value
            elif key in _STARTUP_KEYS or key.startswith("_pq_.") or key in ignored:
                continue
            else:
                self.fatal("08P01", f"unsupported startup parameter: {key}",
                           hint=f"add {key} to ignore_startup_parameters in the pooler config")
                return False
        if params.get("replication", "false").lower() not in ("false", "off", "no", "0"):
            self.fatal("08P01", "replication connections are not supported by the pooler",
                       hint="connect to Postgres directly for replication")
            return False
        options = params.get("options", "")
        if options:
            parsed = _parse_options(options)
            if parsed is None:
                self.fatal("08P01", f"unsupported startup parameter in options: {options}",
                           hint="only -c name=value settings of tracked parameters pass through the pooler")
                return False
            for key, value in parsed:
                canonical = tracked.get(key.lower())
                if canonical is not None:
                    startup[canonical] = value
                elif key not in ignored:
                    self.fatal("08P01", f"unsupported startup parameter in options: {key}",
                               hint=f"add {key} to ignore_startup_parameters, or use the direct endpoint")
                    return False
        self.startup_params = self.pooler.shared_params(startup)[0] if startup else _NO_PARAMS
        return True

    def _auth_step(self, step: AuthStep) -> None:
        if step.send:
            self.write(step.send)
        if not step.done:
            return
        self.auth = None  # the exchange's state (nonces, keys) is not kept for the whole session
        if not step.ok:
            self.pooler.pooler_error(self, "28P01", "password authentication failed")
            self.close()
            return
        self.state = ClientState.WELCOME
        if self.db is None:  # only the admin console logs in without a database entry
            self.pooler.admin_login(self)
            return
        self.pooler.client_authenticated(self, self.db, step)

    def welcome(self, server_params: dict[str, str]) -> None:
        """Finish login: the server's parameters overlaid with ours, our cancel key, ReadyForQuery."""
        if self.state != ClientState.WELCOME:
            return
        values = dict(server_params)
        values.update(self.startup_params)
        tracked = self.pooler.tracked_parameters.values()
        self.params, self.params_key = self.pooler.shared_params({k: values[k] for k in tracked if k in values})
        out = [pq.parameter_status(k, v) for k, v in values.items()]
        out.append(pq.backend_key_data(*self.key))
        out.append(pq.READY_FOR_QUERY_IDLE)
        self.write(b"".join(out))
        self.state = ClientState.READY
        check = self.pooler.config.settings.session_state_check
        if check != "off" and not self.direct and self.pool_mode != PoolMode.SESSION:
            self.state_checker = _SESSION_STATE_CHECKER
            self.state_refuse = check == "error"
            self.track_statements = self.track_statements or self.state_refuse  # refusals use tracked segments
        if self.pooler.config.settings.log_connections:
            log.info("login", client=self.id, remote=self.remote, database=self.database, user=self.user,
                     direct=self.direct)
        if self._held and self.server is None:
            self._hold(b"")
        elif self._held and self.server is not None:
            self.forward(b"", self.server)

    def login_failed(self, fields: dict[str, str]) -> None:
        """The pool could not log in to Postgres for us: pass its error on, as FATAL."""
        self.fatal(fields.get("C", "08006"), fields.get("M", "server login failed"),
                   hint=fields.get("H"), detail=fields.get("D"))


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _parse_options(options: str) -> list[tuple[str, str]] | None:
    """Parse libpq's ``options`` (``-c name=value`` / ``--name=value``); None when it holds anything else."""
    tokens = options.replace("\\ ", "\x00").split()
    result: list[tuple[str, str]] = []
    i = 0
    while i < len(tokens):
        token = tokens[i].replace("\x00", " ")
        if token == "-c" and i + 1 < len(tokens):
            token = tokens[i + 1].replace("\x00", " ")
            i += 1
        elif token.startswith("-c") or token.startswith("--"):
            token = token[2:]
        else:
            return None
        name, sep, value = token.partition("=")
        if not sep:
            return None
        result.append((name.replace("-", "_"), value))
        i += 1
    return result
