"""One client connection to the pooler: the client→server data path of a pooled client.

Theory of operation. A client goes ``STARTUP`` → ``AUTH`` → ``WELCOME`` (waiting for its pool to know
the server's parameters, or for its dedicated backend on the direct endpoint) → ``READY``. Until it is
welcomed its bytes go to its login (``pooler.net.login``: startup packet, TLS, authentication); the pool's
``welcome`` makes it a pooled client and drops the login. In READY it is either linked to a server (bytes
are scanned for message headers and forwarded whole) or not (bytes are held until its pool hands it one; a
held burst larger than ``HOLD_LIMIT`` pauses reading).

The scanner counts, per forwarded message, what makes the linked server unreleasable: each Query,
Sync and FunctionCall owes a ReadyForQuery; any other extended-protocol message leaves the server
"unsynced" until the next Sync; CopyDone/CopyFail end a COPY FROM STDIN. The server side pops those
debts; when none is left and the transaction is idle, the server goes back to the pool. The pool only
pairs: when it hands the freed server to a queued client it returns that client, and this shell starts it
(``linked``) once the releasing client's own work is done, so no release runs another client's data path
from inside the pool.
"""

from __future__ import annotations

import asyncio
import struct
from bisect import bisect_left
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol, TypeAlias, cast

from pooler.config import DatabaseConfig, PoolMode
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
from pooler.net.login import NO_PARAMS, ClientLogin, ClientState, LoginHost
from pooler.net.server import WRITE_BUFFER_HIGH, WRITE_BUFFER_LOW, ServerConnection
from pooler.net.sockopts import INHERITED_BY_ACCEPTED, apply_tcp_options
from pooler.wire import messages as pq
from pooler.wire.auth import AuthType
from pooler.wire.framing import PartialMessage, first_request_end
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
_NO_STATEMENTS: dict[bytes, PreparedStatement] = {}  # shared, never added to (removing a name it lacks is a no-op)
#: What a cancelled request gets, in Postgres's words.
_CANCELED = pq.error_response("57014", "canceling statement due to user request") + pq.READY_FOR_QUERY_IDLE

#: Bytes a client may send while it waits for a server before we stop reading from it.
HOLD_LIMIT = 256 * 1024
#: Queries and Parses up to this size are checked for session state (they are held until whole); longer
#: ones stream through unchecked, so no client can make the pooler buffer an unbounded statement.
CHECK_LIMIT = 64 * 1024



# States and modes the data path compares with on every event, bound once (C statics under Cython, client.pxd).
_READY = ClientState.READY
_CLOSED = ClientState.CLOSED
_SESSION = PoolMode.SESSION
_STATEMENT = PoolMode.STATEMENT


class ClientHost(LoginHost["ClientConnection"], Protocol):
    """What a client connection needs from the process (``pooler.runtime.process.Pooler`` provides it): what
    its login needs (``pooler.net.login.LoginHost``), and this."""

    clock: Callable[[], float]
    statements: StatementCache

    def next_client_id(self) -> int: ...

    def new_cancel_key(self) -> int: ...

    def client_connected(self, client: ClientConnection) -> None: ...


class ClientConnection:
    """A connection from an application to the pooler: an asyncio protocol by duck typing.

    Not a subclass of ``asyncio.Protocol`` because Cython compiles this class to a C type with typed
    fields (see client.pxd), and a C type cannot derive from a Python class.
    """

    __slots__ = (
        "_held",
        "_reading_paused",
        "_skip",
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
        "login",
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
        self.params: dict[str, str] = NO_PARAMS  # the login replaces it with the pool's shared dict
        self.params_key: tuple[str | None, ...] = ()
        self.stats = _NO_POOL_STATS  # the pool's, once logged in
        # This client's prepared statement names: the shared empty dict until its first named Parse (most clients
        # never send one, and an idle client should cost only what it uses); only _named_statement adds to it.
        self.statements: dict[bytes, PreparedStatement] = _NO_STATEMENTS
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
        # Bytes held while no server is linked, or the start of a message that must be seen whole: the usual
        # case (one whole message arrives while no server is linked) is held and later forwarded without a copy.
        self._held = PartialMessage()
        self.held_since = 0.0
        self._skip = 0
        self._reading_paused = False
        self.tls: ClientTls | None = None  # the TLS this connection was accepted with; None: plaintext
        # Startup, TLS and authentication (pooler.net.login); dropped once the client is welcomed.
        self.login: ClientLogin[ClientConnection] | None = ClientLogin(self, pooler)

    # --- asyncio.Protocol -----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        transport.set_write_buffer_limits(WRITE_BUFFER_HIGH, WRITE_BUFFER_LOW)
        if not INHERITED_BY_ACCEPTED:  # elsewhere, the listener's options are not the connection's
            apply_tcp_options(transport, self.pooler.config.settings)
        peer = transport.get_extra_info("peername")
        self.remote = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer or "unix")
        self.pooler.client_connected(self)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.state == ClientState.CLOSED and self.transport is None:
            return
        if self._tls_pending() and exc is not None and self.state != ClientState.CLOSED:
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
        login = self.login
        if login is not None and self.state != _CLOSED:
            login.data_received(data)

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
        if not self._tls_pending():  # mid-handshake, a Postgres message would only be garbage to TLS
            self.write(pq.error_response(sqlstate, message, severity="FATAL", hint=hint, detail=detail))
        self.close()

    def _tls_pending(self) -> bool:
        """A TLS handshake is in progress (pooler.net.login)."""
        return self.login is not None and self.login.in_tls_handshake()

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
            if self.statements is _NO_STATEMENTS:
                self.statements = {}
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

    # --- login (pooler.net.login), and the welcome that makes this a pooled client ---------------------

    def begin_auth(self, auth_type: AuthType, secret: str | None) -> None:
        """Start the password exchange once the user's secret is known (after an auth_query)."""
        login = self.login
        if login is not None:
            login.begin_auth(auth_type, secret)

    def pipelined(self, data: bytes) -> None:
        """Bytes the client sent behind its login (its first query): held for the session, and sent as soon as
        the client is welcomed and has a server."""
        self._held.add(data)
        if self.state == _READY and self.server is None:
            self._hold(b"")

    def welcome(self, server_params: dict[str, str]) -> None:
        """Finish login: the server's parameters overlaid with ours, our cancel key, ReadyForQuery."""
        if self.state != ClientState.WELCOME:
            return
        values = dict(server_params)
        values.update(self.startup_params)
        parameters = self.pooler.parameters
        self.params, self.params_key = parameters.shared({k: values[k] for k in parameters.names if k in values})
        out = [pq.parameter_status(k, v) for k, v in values.items()]
        out.append(pq.backend_key_data(*pq.unpack_cancel_key(self.key)))
        out.append(pq.READY_FOR_QUERY_IDLE)
        self.write(b"".join(out))
        self.state = ClientState.READY
        self.login = None  # its reader, exchange and TLS state are not kept for the session
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


#: A pool of this process: servers are ServerConnections, clients ClientConnections.
ClientPool: TypeAlias = Pool


def servers_of(pool: ClientPool, *, direct: bool = True) -> list[ServerConnection]:
    """A pool's servers (and its direct ones) as the shells made them: the process opens every server of its
    pools as a ServerConnection, which the pool itself only knows as a PoolServer."""
    return cast("list[ServerConnection]", [*pool.servers, *pool.direct_servers] if direct else list(pool.servers))
