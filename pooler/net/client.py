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
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol, TypeAlias, cast

from pooler.config import ADMIN_DATABASE, Config, DatabaseConfig, PoolMode, find_database
from pooler.core.parameters import TrackedParameters
from pooler.core.pool import Pool
from pooler.core.prepared import (
    DESCRIBE_STATEMENT,
    FORWARD,
    RESERVED_LEAD,
    RESERVED_PREFIX,
    SKIP,
    PreparedStatement,
    StatementCache,
    did_not_exist,
    name_in_use,
    reserved_name_refusal,
    statement_name,
)
from pooler.core.session_state import Finding, SessionStateChecker
from pooler.core.stats import LATENCY_BUCKETS, PoolStats
from pooler.log import log
from pooler.net import tls as tls_shell
from pooler.net.duck import as_protocol
from pooler.net.peer import ADMIN_PEER_USER, is_own_user, with_host
from pooler.net.pipe import PipeTransport
from pooler.net.server import WRITE_BUFFER_HIGH, WRITE_BUFFER_LOW, ServerConnection
from pooler.net.sockopts import apply_tcp_options
from pooler.wire import messages as pq
from pooler.wire.auth import AuthStep, AuthType, ClientAuth, login_refusal
from pooler.wire.framing import BadLengthError, MessageReader, PartialMessage
from pooler.wire.handshake import Refusal, read_login
from pooler.wire.messages import (
    COPY_DATA,
    COPY_DONE,
    COPY_FAIL,
    DESCRIBE,
    EXECUTE,
    FLUSH,
    FUNCTION_CALL,
    PARSE,
    QUERY,
    SYNC,
    TERMINATE,
    TX_IDLE,
)

if TYPE_CHECKING:
    from pooler.net.tls import ClientTls

_unpack_length = struct.Struct("!i").unpack_from
_SESSION_STATE_CHECKER = SessionStateChecker()  # one parse cache for the whole pooler
_NO_POOL_STATS = PoolStats()  # counts nothing anyone reads: a client's bytes before it has a pool
_NO_PARAMS: dict[str, str] = {}  # shared and never mutated
#: What a cancelled request gets, in Postgres's words.
_CANCELED = pq.error_response("57014", "canceling statement due to user request") + pq.READY_FOR_QUERY_IDLE

#: Bytes a client may send while it waits for a server before we stop reading from it.
HOLD_LIMIT = 256 * 1024
#: Queries and Parses up to this size are checked for session state (they are held until whole); longer
#: ones stream through unchecked, so no client can make the pooler buffer an unbounded statement.
CHECK_LIMIT = 64 * 1024
#: The largest authentication message we accept (SASL messages are a few hundred bytes).
MAX_AUTH_MESSAGE = 10_000



class ClientState(enum.IntEnum):
    STARTUP = 0
    AUTH = 1
    WELCOME = 2
    READY = 3
    CLOSED = 4


# States and modes the data path compares with on every event, bound once (C statics under Cython, client.pxd).
_READY = ClientState.READY
_CLOSED = ClientState.CLOSED
_SESSION = PoolMode.SESSION
_STATEMENT = PoolMode.STATEMENT


class ClientHost(Protocol):
    """What a client connection needs from the process (``pooler.runtime.process.Pooler`` provides it)."""

    config: Config
    clock: Callable[[], float]
    parameters: TrackedParameters
    statements: StatementCache
    tls: ClientTls | None  # TLS towards clients (pooler.runtime.tls); None: client_tls_sslmode = disable

    def next_client_id(self) -> int: ...

    def new_cancel_key(self) -> tuple[int, int]: ...

    def client_connected(self, client: ClientConnection) -> None: ...

    def client_disconnected(self, client: ClientConnection) -> None: ...

    def over_client_limit(self) -> bool: ...

    def admit_client(self, client: ClientConnection, db: DatabaseConfig) -> str | None: ...

    def cancel(self, key: tuple[int, int]) -> None: ...

    def lookup_secret(self, user: str) -> str | None: ...

    def auth_query_enabled(self, db: DatabaseConfig) -> bool: ...

    def auth_query_lookup(self, client: ClientConnection, db: DatabaseConfig, user: str) -> None: ...

    def admin_login(self, client: ClientConnection) -> None: ...

    def client_authenticated(self, client: ClientConnection, db: DatabaseConfig, step: AuthStep) -> None: ...

    def pooler_error(self, client: ClientConnection | None, sqlstate: str, message: str) -> None: ...

    def http_request(self, transport: asyncio.Transport, data: bytes) -> None:
        """A connection's first bytes ``data`` were an HTTP request: hand ``transport`` to the HTTP shell."""
        ...


class ClientConnection:
    """A connection from an application to the pooler: an asyncio protocol by duck typing.

    Not a subclass of ``asyncio.Protocol`` because Cython compiles this class to a C type with typed
    fields (see client.pxd), and a C type cannot derive from a Python class.
    """

    __slots__ = (
        "_carried",
        "_held",
        "_negotiate",
        "_reader",
        "_reading_paused",
        "_skip",
        "_tls_direct",
        "_tls_pending",
        "auth",
        "cleartext",
        "connected_at",
        "database",
        "db",
        "direct",
        "held_since",
        "http_ok",
        "id",
        "key",
        "last_active",
        "max_packet",
        "params",
        "params_key",
        "pool",
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

    def __init__(self, pooler: ClientHost, *, direct: bool = False) -> None:
        self.pooler = pooler
        self.direct = direct
        # Set by the HTTP and WebSocket shells (pooler.net.sql, pooler.net.websocket): ask for a cleartext
        # password whatever auth_type says, as Neon does on those doors; and whether the first bytes may
        # be an HTTP request (on the pooled port, not inside an HTTP or WebSocket session).
        self.cleartext = False
        self.http_ok = not direct
        self.transport: asyncio.Transport | None = None
        self.state = ClientState.STARTUP
        self.id = pooler.next_client_id()
        self.key = pooler.new_cancel_key()
        self.remote = ""
        self.user = ""
        self.database = ""
        self.db: DatabaseConfig | None = None
        self.pool: ClientPool | None = None
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
        self._reader: MessageReader | None = None  # startup and authentication messages
        # Bytes held while no server is linked, or the start of a message that must be seen whole: the usual
        # case (one whole message arrives while no server is linked) is held and later forwarded without a copy.
        self._held = PartialMessage()
        self.held_since = 0.0
        self._skip = 0
        self._negotiate = b""
        self._reading_paused = False
        self.tls: ClientTls | None = None  # the TLS this connection was accepted with; None: plaintext
        self._tls_pending = False  # a TLS handshake is in progress
        self._tls_direct = False  # the TLS began with a ClientHello, not an SSLRequest (ALPN is checked)
        # A session carried inside an HTTP request or a WebSocket (pooler.net.pipe): no TLS of its own; the
        # outer connection's TLS, if any, is what "SSL required" looks at.
        self._carried = False

    # --- asyncio.Protocol -----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        self._carried = isinstance(transport, PipeTransport)
        transport.set_write_buffer_limits(WRITE_BUFFER_HIGH, WRITE_BUFFER_LOW)
        apply_tcp_options(transport, self.pooler.config.settings)
        peer = transport.get_extra_info("peername")
        self.remote = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer or "unix")
        self.pooler.client_connected(self)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.state == ClientState.CLOSED and self.transport is None:
            return
        if self._tls_pending and exc is not None and self.state != ClientState.CLOSED:
            self.pooler.pooler_error(self, "08P01", f"TLS handshake failed: {str(exc) or type(exc).__name__}")
        self.state = ClientState.CLOSED
        self.transport = None
        self._detach("client disconnected")
        self.pooler.client_disconnected(self)

    def data_received(self, data: bytes) -> None:
        if self.state == _READY:
            server = self.server
            if server is not None:
                self.forward(data, server)
            else:
                self._hold(data)
            return
        if self.state == _CLOSED:
            return
        self._handshake_data(data)

    def eof_received(self) -> bool | None:
        """The peer half-closed: returning None lets the transport close, as asyncio.Protocol's default does."""
        return None

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
        held = self._held
        if held.data:
            whole = held.gather(data)
            if whole is None:
                return  # still short of the message that must be seen whole
            data = whole
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
        ledger = server.ledger
        was_idle = not ledger.pending
        unpack = _unpack_length
        max_packet = self.max_packet
        track = self.track_statements
        reserved_lead = RESERVED_LEAD if track else None  # SQL on the names the pooler owns (core.prepared)
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
            if kind in (QUERY, FUNCTION_CALL):
                checker = self.state_checker
                refusal: bytes | None = None  # a DO block raising why, in place of a refused Query
                if reserved_lead is not None and kind == QUERY and pos + 5 < n and reserved_lead[data[pos + 5]] and (
                        end - pos <= CHECK_LIMIT):
                    # DEALLOCATE/PREPARE of a name the pooler owns? (see pooler.core.prepared)
                    look = min(end - 1, pos + 5 + RESERVED_PREFIX)
                    if look > n:
                        break  # wait for the prefix (the message is at most CHECK_LIMIT)
                    refusal = reserved_name_refusal(data[pos + 5 : look])
                    if refusal is not None:
                        if end > n:
                            break  # replaced whole: wait for the rest of it
                        self.pooler.pooler_error(self, "42939", "prepared statement name is reserved")
                if refusal is None and kind == QUERY and checker is not None and end - pos <= CHECK_LIMIT:
                    if end > n:
                        break  # checked whole: wait for the rest of it
                    findings = checker.check(data[pos + 5 : end - 1].decode("utf-8", "replace"),
                                             ledger.tx_status != TX_IDLE)
                    refusal = self._session_state(findings, server) if findings else None
                if refusal is not None:
                    if parts is None:
                        parts = []
                    parts.append(data[sent_from:pos])
                    parts.append(refusal)  # Postgres raises the refusal: order and tx state stay right
                    sent_from = end
                ledger.request_sent(kind)
            elif kind == SYNC:
                ledger.sync_sent(server.statements.end_segment() if track and not ledger.copy_in else kind)
            elif kind == COPY_DATA:
                pass
            elif kind in (COPY_DONE, COPY_FAIL):
                ledger.copy_end_sent()
            elif kind == TERMINATE:
                if pos:
                    transport.write(data[:pos])
                self.close()
                return
            else:
                if not ledger.unsynced:
                    ledger.extended_sent()
                segment = server.statements.open
                if segment is not None and segment.dropping and kind != FLUSH:  # refused earlier in it
                    if end > n:
                        break  # dropped whole: wait for the rest of it
                    if parts is None:
                        parts = []
                    parts.append(data[sent_from:pos])
                    sent_from = pos = end
                    continue
                if kind == PARSE and self.state_checker is not None and end - pos <= CHECK_LIMIT:
                    if end > n:
                        break  # checked whole: wait for the rest of it
                    name_end = data.find(b"\x00", pos + 5, end)
                    query_end = data.find(b"\x00", name_end + 1, end)
                    findings = self.state_checker.check(
                        data[name_end + 1 : query_end].decode("utf-8", "replace"), ledger.tx_status != TX_IDLE
                    ) if name_end > 0 and query_end > 0 else ()
                    if findings and self._session_state(findings, server, extended=True) is not None:
                        if parts is None:
                            parts = []
                        parts.append(data[sent_from:pos])  # the Parse is refused in its place
                        sent_from = pos = end
                        continue
                if track and kind != FLUSH:
                    if kind == EXECUTE:
                        server.statements.record(kind)
                    else:
                        span = statement_name(kind, data, pos, min(end, n))
                        if span is None and end <= n:
                            span = (pos, pos)  # whole, but its name is not terminated: Postgres refuses it (08P01)
                        if span is None or (span[1] > span[0] and end > n):
                            break  # a named message is rewritten whole: wait for the rest of it
                        if span[1] > span[0]:
                            if parts is None:
                                parts = []
                            parts.append(data[sent_from:pos])
                            parts.extend(self._named_statement(kind, data, pos, end, span=span, server=server))
                            sent_from = end
                        elif kind == DESCRIBE and end > pos + 5 and data[pos + 5] == ord("S"):
                            server.statements.record(DESCRIBE_STATEMENT)
                        else:
                            server.statements.record(kind)
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
        elif stop == n:
            transport.write(data)
        elif stop:
            transport.write(data[:stop])
        if stop < n:
            self._hold_partial(data, stop)
        if was_idle and ledger.pending:
            now = server.request_started = self.pooler.clock()
            if ledger.tx_status == TX_IDLE:
                server.xact_started = now

    def _hold_partial(self, data: bytes, start: int) -> None:
        """Keep a message that must be seen whole (checked, rewritten or dropped) until the rest arrives.

        Only messages up to CHECK_LIMIT are checked, and named statements up to max_packet_size are
        rewritten, so what is held is bounded; the next reads are gathered without a scan or a re-copy
        until the message is complete (pooler.wire.framing.PartialMessage), and ``held_since`` lets
        query_timeout cut a client that stalls in the middle of one.
        """
        self._held.keep(data, start)
        self.held_since = self.pooler.clock()

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
                server.synthesize(PARSE, pq.error_response("0A000", message, hint=first.fix), refuse=True)
                return b""
            return pq.error_query("0A000", message, hint=first.fix)
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
        if kind == PARSE:
            self.stats.client_parse_count += 1
            if name in self.statements:
                server.synthesize(PARSE, name_in_use(name), refuse=True)
                return []
            statement = self.pooler.statements.get(data[span[1] + 1 : end])
            self.statements[name] = statement
            if statement in server.statements.prepared:
                server.statements.use(statement)
                server.synthesize(PARSE, pq.PARSE_COMPLETE)
                return []
            self.stats.server_parse_count += 1
            limit = self.pooler.config.settings.max_prepared_statements
            return server.statements.prepare(statement, FORWARD, name, limit)
        if kind == pq.CLOSE:
            self.statements.pop(name, None)
            server.synthesize(pq.CLOSE, pq.CLOSE_COMPLETE)
            return []
        known = self.statements.get(name)
        if known is None:
            server.synthesize(kind, did_not_exist(name), refuse=True)
            return []
        statement = known
        out: list[bytes] = []
        statements = server.statements
        if statement in statements.prepared:
            statements.use(statement)
        else:  # prepared by this client on another server (or evicted here): prepare it first, quietly
            self.stats.server_parse_count += 1
            out = statements.prepare(statement, SKIP, None, self.pooler.config.settings.max_prepared_statements)
        if kind == pq.BIND:
            self.stats.bind_count += 1
            server.statements.record(kind)
            head, tail = data[pos + 5 : span[0]], data[span[1] : end]
        else:
            server.statements.record(DESCRIBE_STATEMENT)
            head, tail = b"S", b"\x00"
        out.append(pq.build(bytes((kind,)), head + statement.name + tail))
        return out

    def cancel_queued_request(self) -> None:
        """A CancelRequest while this client waits for a server: its first request has not run, so it leaves
        the queue and is answered as Postgres answers a cancelled statement, instead of running later."""
        held = bytes(self._held.data)
        end = first_request_end(held)
        if end is None or self.pool is None:
            return  # nothing whole to cancel yet: as with Postgres when no query runs, the cancel does nothing
        self.pool.remove_waiter(self)
        self.waiting = False
        self._held.take()
        self._held.add(held[end:])
        self.write(_CANCELED)
        if len(held) - end >= 5:
            self._hold(b"")  # pipelined requests behind the cancelled one queue again
        elif self._reading_paused:
            self.resume_reading()

    def take_held(self) -> bytes:
        """Hand what this connection holds to a new owner of the socket (the admin console)."""
        return self._held.take()

    def sending_partial(self) -> bool:
        """Linked, with the start of a message held until the rest arrives (see _hold_partial)."""
        return bool(self._held.need) and self.server is not None

    def _hold(self, data: bytes) -> None:
        """Keep bytes that arrived while no server is linked; ask the pool for one once a message starts."""
        held = self._held
        held.add(data)
        if len(held.data) < 5:
            return
        if held.data[0] == TERMINATE:
            self.close()
            return
        if len(held.data) > HOLD_LIMIT:
            self.pause_reading()
        if not self.waiting and self.pool is not None:
            self.waiting = True
            self.wait_started = self.pooler.clock()
            if self.pool.request(self) is not None:  # a server at once: paired with us, ours to start
                server = self.server
                if server is not None:
                    self.linked(server, self.wait_started)

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

    def linked(self, server: ServerConnection, now: float) -> None:
        """The pool paired us with a server (at ``now``): align its session parameters, send what we hold.

        Called by the shell that asked the pool (this client's request, or the shell of the callback whose
        release handed the server on, once that callback's own work is done), never by the pool itself."""
        stats = self.stats
        stats.server_assignment_count += 1
        if self.waiting:
            self.waiting = False
            waited = now - self.wait_started
            hist = stats.wait_hist
            hist.counts[bisect_left(LATENCY_BUCKETS, waited)] += 1
            hist.total += waited
        if server.params_key != self.params_key:
            self._sync_parameters(server)
        if self._held.data:
            self.forward(b"", server)
        if self._reading_paused:
            self.resume_reading()

    def _sync_parameters(self, server: ServerConnection) -> None:
        """Send one SET for every tracked value in which the server differs from this client."""
        stale = [(k, v) for k, v in self.params.items() if server.params.get(k) != v]
        if stale:
            server.run_internal(";".join(f"SET {k} = {pq.literal(v)}" for k, v in stale))

    def server_ready_for_query(self, server: ServerConnection) -> None:
        """The server owes nothing: release it if this pool mode allows and it is clean."""
        if server.ledger.tx_status != TX_IDLE:
            server.last_used = self.pooler.clock()  # idle in a transaction from now on (idle_transaction_timeout)
        pool = self.pool
        assert pool is not None
        mode = pool.mode  # read live: a RELOAD that changes the pool's mode applies from the next transaction
        if mode == _SESSION or self.direct or self._skip:
            return
        if server.is_clean():
            now = self.last_active = self.pooler.clock()
            handed_to = pool.server_ready(self, server, now)
            if len(self._held.data) >= 5:
                self._hold(b"")  # this client's own work first: its next request (pipelined) queues again
            if handed_to is not None:
                handed_to.linked(server, now)  # then what the release answered: the next client starts
        elif mode == _STATEMENT and server.ledger.tx_status != TX_IDLE:
            self.fatal("08P01", "transaction blocks not allowed in statement pooling mode",
                       hint="use transaction pool_mode, or the direct endpoint, for multi-statement transactions")

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
        handed_to = pool.client_left_server(self, server, self._skip != 0, reason)
        if handed_to is not None:
            handed_to.linked(server, self.pooler.clock())

    # --- startup and authentication -------------------------------------------------------------

    def _handshake_data(self, data: bytes) -> None:
        reader = self._reader
        if reader is None:
            if (data and self.http_ok and self.state == ClientState.STARTUP and 0x41 <= data[0] <= 0x5A
                    and not self._tls_pending and self._alpn() != pq.ALPN_POSTGRESQL):
                # A startup packet starts with a zero byte, an HTTP method with A-Z; the same holds for the
                # first decrypted bytes after a TLS handshake (HTTPS, WSS), unless ALPN said "postgresql".
                self._switch_to_http(data)
                return
            reader = self._reader = MessageReader(MAX_AUTH_MESSAGE)
        reader.feed(data)
        if self._tls_pending:
            return  # decrypted bytes that came with the end of the handshake: read once it is done
        try:
            while True:
                if self.state == ClientState.STARTUP:
                    if self.tls is None and tls_shell.is_client_hello(reader.peek_type()):
                        self._begin_tls(direct=True)  # Postgres 17's sslnegotiation=direct
                        return
                    packet = reader.next_startup_packet()
                    if packet is None:
                        return
                    self._startup(packet)
                elif self.state == ClientState.AUTH and self.auth is not None:
                    kind = reader.peek_type()
                    if kind is None:
                        return
                    if kind != pq.PASSWORD:
                        self.fatal("08P01", f"expected a password message, got message type {chr(kind)!r}")
                        return
                    message = reader.next_message()
                    if message is None:
                        return
                    self._auth_step(self.auth.receive(message[1]))
                else:
                    break
        except BadLengthError as exc:
            self.fatal("08P01", f"invalid password message length {exc.length}")
            return
        except pq.ProtocolViolationError as exc:
            self.fatal("08P01", str(exc))
            return
        if self.state in (ClientState.WELCOME, ClientState.READY):
            self._reader = None  # the login is over: its buffer is not kept for the session
            rest = reader.take_rest()
            if rest and self.cleartext and rest[0] == pq.PASSWORD and len(rest) >= pq.HEADER_SIZE:
                length = pq.read_int32(rest, 1)
                if len(rest) >= 1 + length:
                    rest = rest[1 + length :]  # a pipelined password that auth_type trust never asked for
            if rest:
                # The client pipelined its first query behind the login (Neon's pipelined connect does).
                self._held.add(rest)
                if self.state == ClientState.READY and self.server is None:
                    self._hold(b"")

    def _switch_to_http(self, data: bytes) -> None:
        """The first bytes are an HTTP request (Neon's SQL over HTTP or a WebSocket upgrade): from here the
        connection belongs to the HTTP shell, and this object was never a client."""
        transport = self.transport
        self.state = ClientState.CLOSED
        self.transport = None
        self.pooler.client_disconnected(self)
        if transport is not None:
            self.pooler.http_request(transport, data)

    def _startup(self, packet: bytes) -> None:
        try:
            startup = pq.parse_startup_packet(packet)
        except pq.ProtocolViolationError as exc:
            self.fatal("08P01", f"invalid startup packet: {exc}")
            return
        if self._tls_direct and self._alpn() != pq.ALPN_POSTGRESQL:
            # Checked here, not at the end of the handshake: an HTTPS client (ALPN http/1.1 or none) is told
            # apart by its first decrypted bytes; a Postgres client without ALPN is refused as Postgres does.
            self.fatal("08P01", "received direct SSL connection request without ALPN protocol negotiation extension",
                       hint="direct TLS (sslnegotiation=direct) needs ALPN \"postgresql\"; use libpq 17 or newer")
            return
        if startup.code == pq.SSL_REQUEST_CODE and self._tls_offered():
            if self._reader is not None and len(self._reader):
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
        if self.pooler.tls is not None and self.pooler.tls.required and self._plaintext_tcp():
            self.fatal("08P01", "SSL required",
                       hint="client_tls_sslmode requires TLS: connect with sslmode=require (or stronger)")
            return
        if self.pooler.over_client_limit():
            # Refused here, after SSL negotiation, as Postgres and PgBouncer do: refused on accept, libpq
            # (sslmode=prefer) reports only "server sent an error response during SSL exchange".
            self.fatal("53300", "no more connections allowed (max_client_conn)",
                       hint="raise max_client_conn, or close idle connections in the app")
            return
        settings = self.pooler.config.settings
        login = read_login(startup, self.pooler.parameters.canonical, settings.ignore_startup_parameters)
        if isinstance(login, Refusal):
            self.fatal(login.sqlstate, login.message, hint=login.hint)
            return
        self._negotiate = login.negotiate
        user = self.user = sys.intern(login.user)  # one string per name, not one per connection
        self.database = sys.intern(login.database)
        tracked = login.tracked
        if settings.application_name_add_host and not self.direct:
            peer = self.transport.get_extra_info("peername") if self.transport is not None else None
            tracked = {**tracked, "application_name": with_host(tracked.get("application_name"), peer)}
        self.startup_params = self.pooler.parameters.shared(tracked)[0] if tracked else _NO_PARAMS
        if self.database == ADMIN_DATABASE:
            if user == ADMIN_PEER_USER and is_own_user(self.transport):
                self.state = ClientState.WELCOME  # PgBouncer's peer login: the pooler's own OS user, no password
                if self._negotiate:
                    self.write(self._negotiate)
                self.write(pq.AUTH_OK_MESSAGE)
                self.pooler.admin_login(self)
                return
            # The admin console: authenticated like anyone (auth_file / auth_query), then handed over.
            self.state = ClientState.AUTH
            self.begin_auth(settings.auth_type, self.pooler.lookup_secret(user))
            return
        db = find_database(self.pooler.config, self.database)
        if db is None:
            # As PgBouncer: authenticate first, then say "no such database" (see _auth_step), so that
            # which databases exist is not told to whoever knocks.
            self.state = ClientState.AUTH
            self.begin_auth(settings.auth_type, self.pooler.lookup_secret(user))
            return
        self.db = db
        refusal = self.pooler.admit_client(self, db)
        if refusal is not None:
            self.fatal("08P01", refusal)  # PgBouncer's words and SQLSTATE
            return
        self.state = ClientState.AUTH
        secret = self.pooler.lookup_secret(user)
        if secret is None and settings.auth_type is not AuthType.ANY and self.pooler.auth_query_enabled(db):
            self.pooler.auth_query_lookup(self, db, user)
            return
        self.begin_auth(settings.auth_type, secret)

    def begin_auth(self, auth_type: AuthType, secret: str | None) -> None:
        """Start the exchange once the user's secret is known (possibly after an auth_query)."""
        if self.state != ClientState.AUTH:
            return
        if self.cleartext and auth_type not in (AuthType.TRUST, AuthType.ANY):
            auth_type = AuthType.PLAIN  # checked against the same secret (plain, md5 or SCRAM verifier)
        # The admin console (no db entry) forces its own user, as PgBouncer's: any lets admin_users in.
        refusal = login_refusal(auth_type, secret, forced_user=self.db is None or bool(self.db.user))
        if refusal is not None:
            self.fatal("08P01", refusal)
            return
        binding = self.tls.channel_binding if self.tls is not None else None
        self.auth = ClientAuth(auth_type, self.user, secret, iterations=self.pooler.config.settings.scram_iterations,
                               channel_binding=binding)
        if self._negotiate:
            self.write(self._negotiate)
        self._auth_step(self.auth.start())
        if self._reader is not None and len(self._reader) and self.state == ClientState.AUTH:
            self._handshake_data(b"")

    # --- TLS (the contexts: pooler.runtime.tls; the handshake: pooler.net.tls) ------------------------

    def _tls_offered(self) -> bool:
        """TLS is on and this is a plaintext TCP connection (unix sockets never do TLS, as in PgBouncer)."""
        transport = self.transport
        return (self.pooler.tls is not None and self.tls is None and transport is not None and not self._carried
                and not tls_shell.is_unix(transport))

    def _plaintext_tcp(self) -> bool:
        """This connection, or the HTTP/WebSocket connection carrying it, is TCP without TLS: what
        client_tls_sslmode = require refuses (a unix socket is exempt, as in PgBouncer)."""
        transport = self.transport
        return (transport is not None and not tls_shell.is_unix(transport)
                and transport.get_extra_info("ssl_object") is None)

    def _alpn(self) -> str | None:
        """The ALPN protocol the TLS handshake selected; None without TLS or without ALPN."""
        ssl_object = self.transport.get_extra_info("ssl_object") if self.transport is not None else None
        return ssl_object.selected_alpn_protocol() if ssl_object is not None else None

    def _begin_tls(self, *, direct: bool) -> None:
        """Hand the connection to the TLS layer; the startup packet then comes again, decrypted."""
        tls = self.pooler.tls
        transport = self.transport
        if tls is None or transport is None or tls_shell.is_unix(transport):
            self.pooler.pooler_error(self, "08P01", "direct TLS connection attempted but TLS is not enabled "
                                     "(client_tls_sslmode = disable)")
            self.close()
            return
        reader = self._reader
        already_read = reader.take_rest() if direct and reader is not None else b""
        self._tls_pending = True
        # Nothing more may reach data_received before the TLS layer takes over: the ClientHello that
        # follows our "S" belongs to it. start_tls resumes reading once it is in place.
        transport.pause_reading()
        tls_shell.spawn(self._tls_handshake(tls, transport, already_read, direct))

    async def _tls_handshake(self, tls: ClientTls, transport: asyncio.Transport, already_read: bytes,
                             direct: bool) -> None:
        # client_login_timeout cuts a stalled handshake (the sweep, one reason for every slow login); the
        # TLS layer's own timeout is only the backstop, later, and 60 s when client_login_timeout is off.
        login_timeout = self.pooler.config.settings.client_login_timeout
        timeout = login_timeout + 5 if login_timeout else None
        try:
            upgraded = await tls_shell.accept(transport, as_protocol(self), tls.context, already_read, timeout)
        except Exception as exc:  # ssl.SSLError, a reset, a timeout: the client goes, nobody else notices
            self._tls_pending = False
            if self.state != ClientState.CLOSED:
                self.pooler.pooler_error(self, "08P01", f"TLS handshake failed: {str(exc) or type(exc).__name__}")
            transport.close()
            self.connection_lost(exc)
            return
        self._tls_pending = False
        self.transport = upgraded
        self.tls = tls
        if self.state == ClientState.CLOSED:  # closed meanwhile (client_login_timeout, shutdown): the loop's
            upgraded.close()                  # TLS may still report a handshake that ended with the socket
            self.connection_lost(None)
            return
        upgraded.set_write_buffer_limits(WRITE_BUFFER_HIGH, WRITE_BUFFER_LOW)
        self._tls_direct = direct
        # The decrypted stream starts afresh, in STARTUP with nothing consumed: its first bytes may be a
        # startup packet or an HTTP request (HTTPS, WSS), told apart as on a plaintext connection. Bytes that
        # came with the end of the handshake were kept in the reader: they go through that same check.
        reader, self._reader = self._reader, None
        rest = reader.take_rest() if reader is not None else b""
        if rest:
            self._handshake_data(rest)

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
        if self.db is None:  # the admin console, or a database that does not exist
            if self.database == ADMIN_DATABASE:
                self.pooler.admin_login(self)
            else:
                self.fatal("3D000", f"no such database: {self.database}",
                           hint="add it to [databases] in the pooler config, or define a \"*\" fallback entry")
            return
        self.pooler.client_authenticated(self, self.db, step)

    def welcome(self, server_params: dict[str, str]) -> None:
        """Finish login: the server's parameters overlaid with ours, our cancel key, ReadyForQuery."""
        if self.state != ClientState.WELCOME:
            return
        values = dict(server_params)
        values.update(self.startup_params)
        parameters = self.pooler.parameters
        self.params, self.params_key = parameters.shared({k: values[k] for k in parameters.names if k in values})
        out = [pq.parameter_status(k, v) for k, v in values.items()]
        out.append(pq.backend_key_data(*self.key))
        out.append(pq.READY_FOR_QUERY_IDLE)
        self.write(b"".join(out))
        self.state = ClientState.READY
        check = self.pooler.config.settings.session_state_check
        if check != "off" and not self.direct and (self.pool is None or self.pool.mode != PoolMode.SESSION):
            self.state_checker = _SESSION_STATE_CHECKER
            self.state_refuse = check == "error"
            self.track_statements = self.track_statements or self.state_refuse  # refusals use tracked segments
        if self.pooler.config.settings.log_connections:
            log.info("login", client=self.id, remote=self.remote, database=self.database, user=self.user,
                     direct=self.direct)
        if self._held.data and self.server is None:
            self._hold(b"")
        elif self._held.data and self.server is not None:
            self.forward(b"", self.server)

    def login_failed(self, fields: dict[str, str]) -> None:
        """The pool could not log in to Postgres for us: pass its error on, as FATAL."""
        self.fatal(fields.get("C", "08006"), fields.get("M", "server login failed"),
                   hint=fields.get("H"), detail=fields.get("D"))


def first_request_end(data: bytes) -> int | None:
    """Where the first request in ``data`` ends (a Query or FunctionCall, or the Sync closing extended messages);
    None when no request is whole yet."""
    pos = 0
    n = len(data)
    while pos + 5 <= n:
        kind = data[pos]
        end: int = pos + 1 + _unpack_length(data, pos + 1)[0]
        if end > n:
            return None
        if kind in (pq.QUERY, pq.FUNCTION_CALL, pq.SYNC):
            return end
        pos = end
    return None



#: A pool of this process: servers are ServerConnections, clients ClientConnections.
ClientPool: TypeAlias = Pool


def servers_of(pool: ClientPool, *, direct: bool = True) -> list[ServerConnection]:
    """A pool's servers (and its direct ones) as the shells made them: the process opens every server of its
    pools as a ServerConnection, which the pool itself only knows as a PoolServer."""
    return cast("list[ServerConnection]", [*pool.servers, *pool.direct_servers] if direct else list(pool.servers))
