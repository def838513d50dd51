"""One connection from the pooler to Postgres (a "server" in PgBouncer's words).

Theory of operation. A server logs in once (``LOGIN``), then alternates between ``IDLE`` in its pool
and ``ACTIVE``, linked to one client. While active, bytes from Postgres are forwarded to the client in
whole chunks; the scanner only reads message headers, to keep the server's ``Ledger``
(``pooler.core.ledger``: what it still owes, its transaction status, COPY) and its tracked ``params``
(the GUCs Postgres reported with ParameterStatus) current. From those the pool decides, cheaply and
exactly, when a server is clean enough to hand to another client.

The pooler also talks to Postgres on its own (parameter sync before a client's traffic, the reset
query, the health check). Such a query is sent only when nothing is pending, so its answer is always
the first thing that comes back; the ledger counts the ReadyForQuery messages whose answers are
dropped instead of forwarded.
"""

from __future__ import annotations

import asyncio
import struct
from bisect import bisect_left
from typing import Protocol, cast

from pooler.config import PoolMode
from pooler.core.ledger import Ledger
from pooler.core.parameters import ParamsKey
from pooler.core.pool import Pool, PoolClient, ServerState
from pooler.core.prepared import DESCRIBE_STATEMENT, FORWARD, PreparedStatement, Segment, ServerStatements
from pooler.core.stats import LATENCY_BUCKETS
from pooler.net.sockopts import apply_tcp_options
from pooler.wire import messages as pq
from pooler.wire.auth import AuthFailed, ServerAuth
from pooler.wire.framing import MessageReader, PartialMessage
from pooler.wire.messages import (
    COMMAND_COMPLETE,
    COPY_IN_RESPONSE,
    DATA_ROW,
    ERROR_RESPONSE,
    PARAMETER_STATUS,
    READY_FOR_QUERY,
    TX_IDLE,
)

_LENGTH = struct.Struct("!i")
_unpack_length = _LENGTH.unpack_from

# States the scanner compares with on every chunk, bound once (Cython keeps them in C statics, server.pxd;
# the wire constants imported by name above become C ints there).
_LOGIN = ServerState.LOGIN
_IDLE = ServerState.IDLE
_BUSY = ServerState.BUSY
_STATEMENT = PoolMode.STATEMENT

# Which backend message types the scanner must look inside (everything else is only skipped).
_INSPECT = bytearray(256)
for _t in (READY_FOR_QUERY, PARAMETER_STATUS, COPY_IN_RESPONSE, ERROR_RESPONSE, COMMAND_COMPLETE):
    _INSPECT[_t] = 1
_INSPECT_TABLE = bytes(_INSPECT)

#: CommandComplete tags after which Postgres has no prepared statements left on this server.
_FORGET_STATEMENTS = (b"DISCARD ALL\x00", b"DEALLOCATE ALL\x00")
#: The tag of a DEALLOCATE of one name: which one is unknown, so a server holding pooler statements is retired.
_DEALLOCATE_ONE = b"DEALLOCATE\x00"
_FORGET_LENGTHS = frozenset(4 + len(tag) for tag in (*_FORGET_STATEMENTS, _DEALLOCATE_ONE))

# How a tracked request's answer ends, by request code: the message types that complete it.
_COMPLETES: dict[int, bytes] = {
    pq.PARSE: b"1",
    pq.BIND: b"2",
    pq.CLOSE: b"3",
    pq.DESCRIBE: b"Tn",
    DESCRIBE_STATEMENT: b"Tn",
    pq.EXECUTE: b"CIs",
}
_PASS_THROUGH = frozenset((pq.NOTICE_RESPONSE, PARAMETER_STATUS, pq.NOTIFICATION_RESPONSE))

_FATAL_PREFIX = b"SFATAL\x00"
_PANIC_PREFIX = b"SPANIC\x00"

#: The largest message Postgres sends during login that we read (errors and notices are a few hundred bytes).
MAX_LOGIN_MESSAGE = 1024 * 1024

#: Write-buffer marks for both directions: past ``high`` the other side stops being read.
WRITE_BUFFER_HIGH = 256 * 1024
WRITE_BUFFER_LOW = 64 * 1024


class LinkedClient(Protocol):
    """The client a server forwards to, as the server sees it (``pooler.net.client`` implements it)."""

    transport: asyncio.Transport | None
    direct: bool
    params: dict[str, str]
    params_key: ParamsKey
    statements: dict[bytes, PreparedStatement]

    def write(self, data: bytes) -> None: ...

    def fatal(self, sqlstate: str, message: str, *, hint: str | None = None, detail: str | None = None) -> None: ...

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    def server_ready_for_query(self, server: ServerConnection) -> None: ...


class ServerConnection:
    """A backend connection and the byte scanner for its responses: an asyncio protocol by duck typing.

    Not a subclass of ``asyncio.Protocol`` because Cython compiles this class to a C type with typed
    fields (see server.pxd), and a C type cannot derive from a Python class; asyncio and uvloop only call
    the protocol methods defined here.
    """

    __slots__ = (
        "_login_reader",
        "_partial",
        "_skip",
        "auth",
        "cancels_in_flight",
        "client",
        "close_reason",
        "connect_started",
        "created_at",
        "direct",
        "fatal_seen",
        "key",
        "last_used",
        "ledger",
        "login_error",
        "params",
        "params_key",
        "pool",
        "reading_paused",
        "request_started",
        "stale",
        "startup_params",
        "state",
        "statements",
        "stats",
        "transport",
        "xact_started",
    )

    def __init__(
        self,
        pool: Pool,
        startup_params: dict[str, str],
        auth: ServerAuth,
        *,
        direct: bool = False,
    ) -> None:
        self.pool = pool
        self.startup_params = startup_params
        self.auth = auth
        self.direct = direct
        self.transport: asyncio.Transport | None = None
        self.client: LinkedClient | None = None
        self.state = ServerState.CONNECTING
        self.params: dict[str, str] = {}
        self.params_key: ParamsKey = ()  # tracked values, in TrackedParameters.names order
        self.key: tuple[int, int] | None = None
        self.ledger = Ledger()
        self.fatal_seen = False
        self.statements = ServerStatements()  # prepared statements and the tracked segments (core.prepared)
        self.reading_paused = False
        self.cancels_in_flight = 0  # CancelRequests sent for this server's query whose connection is still open
        self.stale = False  # set on RECONNECT/config change: close instead of reuse
        self.login_error: dict[str, str] | None = None
        self.close_reason = ""
        self._login_reader = MessageReader(MAX_LOGIN_MESSAGE)
        self._partial = PartialMessage()  # an inspected message not whole yet (at most one message plus one read)
        self._skip = 0
        loop_time = pool.host.clock()
        self.created_at = loop_time
        self.connect_started = loop_time
        self.last_used = loop_time
        self.request_started = 0.0  # when the oldest request still owed was sent
        self.xact_started = 0.0  # when the transaction in progress began
        self.stats = pool.stats

    # --- asyncio.Protocol -----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        transport.set_write_buffer_limits(WRITE_BUFFER_HIGH, WRITE_BUFFER_LOW)
        apply_tcp_options(transport, self.pool.host.config.settings)
        self.pool.server_connecting(self)
        transport.write(pq.startup_message(self.startup_params))

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.state == ServerState.CLOSED:
            return  # close() already did the bookkeeping
        self._closed(f"server connection lost ({exc or 'EOF'})")

    def eof_received(self) -> bool | None:
        """The peer half-closed: returning None lets the transport close, as asyncio.Protocol's default does."""
        return None

    def pause_writing(self) -> None:
        client = self.client
        if client is not None:
            client.pause_reading()

    def resume_writing(self) -> None:
        client = self.client
        if client is not None:
            client.resume_reading()

    def pause_reading(self) -> None:
        """Stop reading Postgres's answers: the linked client's socket is full."""
        if not self.reading_paused and self.transport is not None:
            self.reading_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.reading_paused:
            self.reading_paused = False
            if self.transport is not None:
                self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        if self.state == _LOGIN:
            self._login_data(data)
            return
        partial = self._partial
        if partial.data:
            whole = partial.gather(data)
            if whole is None:
                return  # still short of the message to inspect: nothing before it is left to forward
            data = whole
        n = len(data)
        pos = self._skip
        if pos >= n:
            # Inside the body of a large message: nothing to look at, forward as is.
            self._skip = pos - n
            if not self.ledger.swallow and self.client is not None:
                self.stats.sent += n
                self.client.write(data)
            return
        if self.statements.inflight:
            self._data_tracked(data, pos)
            return
        inspect = _INSPECT_TABLE
        unpack = _unpack_length
        ledger = self.ledger
        forward_from = -1 if ledger.swallow else 0
        refused = -1
        refused_parameters: dict[str, str] | None = None
        answered = 0
        while pos + 5 <= n:
            kind = data[pos]
            end = pos + 1 + unpack(data, pos + 1)[0]
            if inspect[kind]:
                if end > n:
                    break
                if kind == READY_FOR_QUERY:
                    swallowing = ledger.swallow
                    if ledger.ready_for_query(data[pos + 5]):
                        answered += 1
                        if ledger.tx_status != TX_IDLE and self._refuses_transactions():
                            refused = pos
                            break
                    elif swallowing and not ledger.swallow:
                        forward_from = end
                elif kind == PARAMETER_STATUS:
                    self._parameter_status(data[pos + 5 : end - 1])
                elif kind == COMMAND_COMPLETE:
                    if end - pos - 1 in _FORGET_LENGTHS:
                        self._command_tag(data[pos + 5 : end])
                elif kind == COPY_IN_RESPONSE:
                    self._copy_in_started()
                elif data.startswith(_FATAL_PREFIX, pos + 5) or data.startswith(_PANIC_PREFIX, pos + 5):
                    self.fatal_seen = True
                elif ledger.swallow and self.client is not None:
                    # The only internal query run while a client is linked is the SET of its parameters.
                    refused_parameters = pq.parse_error_fields(data[pos + 5 : end])
                    break
                elif ledger.swallow:
                    self.stale = True  # the pooler's own reset or check failed (cancelled?): close, never reuse
                elif self.statements.prepared and data.find(b"pooler_", pos + 5, end) >= 0:
                    self._statement_error(data[pos + 5 : end])
            pos = end
        if answered:
            self._count_answers(answered)
        if refused >= 0:
            self._refuse_transaction(data, forward_from, refused)
            return
        if refused_parameters is not None:
            self._parameters_refused(refused_parameters)
            return
        if pos > n:
            self._skip = pos - n
            stop = n
        else:
            self._skip = 0
            stop = pos
            if pos < n:
                partial.keep(data, pos)
        client = self.client
        if forward_from >= 0 and client is not None and client.transport is not None:
            if forward_from == 0 and stop == n:
                self.stats.sent += n
                client.transport.write(data)
            elif stop > forward_from:
                self.stats.sent += stop - forward_from
                client.transport.write(data[forward_from:stop])
        if client is None:
            if self.state == _IDLE and self.fatal_seen:
                self.close("server sent FATAL while idle")
            elif self.state == _BUSY and not ledger.pending and not ledger.swallow:
                self._start(self.pool.server_done_busy(self))
            return
        if not ledger.pending and not ledger.swallow:
            client.server_ready_for_query(self)

    # --- state helpers ----------------------------------------------------------------------------

    def _start(self, client: PoolClient | None) -> None:
        """Act on what a release of this server answered (``Pool.release``): the client it was handed to, if
        any, starts on it now, at the end of this callback rather than inside the pool."""
        if client is not None:
            client.linked(self, self.pool.host.clock())

    def _count_answers(self, answered: int) -> None:
        """Statistics for the requests a chunk answered: one clock read per chunk, not per message."""
        now = self.pool.host.clock()
        stats = self.stats
        stats.query_count += answered
        elapsed = now - self.request_started
        hist = stats.query_hist
        hist.counts[bisect_left(LATENCY_BUCKETS, elapsed)] += 1
        hist.total += elapsed
        self.request_started = now  # a pipelined request still owed started no later than this
        if self.ledger.tx_status == TX_IDLE:
            stats.xact_count += 1
            elapsed = now - self.xact_started
            hist = stats.xact_hist
            hist.counts[bisect_left(LATENCY_BUCKETS, elapsed)] += 1
            hist.total += elapsed

    def is_clean(self) -> bool:
        """True when nothing is in flight and no transaction is open: safe for another client."""
        return self.ledger.is_clean() and self._skip == 0 and not self._partial.data and self.statements.open is None

    def _refuses_transactions(self) -> bool:
        client = self.client
        return client is not None and not client.direct and self.pool.mode == _STATEMENT

    def _refuse_transaction(self, data: bytes, forward_from: int, at: int) -> None:
        """Statement mode, and a ReadyForQuery says a transaction block is open: like PgBouncer, the client
        gets a FATAL in place of that ReadyForQuery (so the statement that opened the block fails), and the
        server, inside a transaction nobody owns, is closed."""
        client = self.client
        assert client is not None
        if 0 <= forward_from < at:
            client.write(data[forward_from:at])
        self.pool.unlink(cast(PoolClient, client), self)
        reason = "transaction blocks not allowed in statement pooling mode"
        client.fatal("08P01", reason,
                     hint="use transaction pool_mode, or the direct endpoint, for multi-statement transactions")
        self.close(reason)

    def _parameters_refused(self, fields: dict[str, str]) -> None:
        """Postgres refused the SET that brings this server in line with the linked client's tracked parameters
        (a value it would have refused at login, such as TimeZone=Not/AZone). Like PgBouncer, drop the client
        rather than run its queries with settings it did not ask for; it hears Postgres's error, as FATAL. The
        server may already be running the client's query behind the SET: close it."""
        client = self.client
        assert client is not None
        self.pool.unlink(cast(PoolClient, client), self)
        client.fatal(fields.get("C", "22023"), fields.get("M", "invalid value for a startup parameter"),
                     detail=fields.get("D"),
                     hint=fields.get("H") or "fix the value in the connection string; the pooler sets it with SET")
        self.close("the client's startup parameters were refused")

    def _parameter_status(self, body: bytes) -> None:
        key, text = pq.parse_parameter_status(body)
        self.params[key] = text
        if key not in self.pool.host.parameters.names_set:
            return
        self.params_key = self.pool.host.parameters.key(self.params)
        client = self.client
        if client is not None and key in client.params:  # client.params may be shared: replace, never mutate
            client.params, client.params_key = self.pool.host.parameters.shared({**client.params, key: text})

    def _copy_in_started(self) -> None:
        """Postgres entered copy-in mode: the ledger drops the Syncs it will ignore, tracked ones included."""
        self.statements.inflight -= len(self.ledger.copy_in_started())

    def run_internal(self, sql: str) -> None:
        """Send the pooler's own query; its whole answer is dropped. Only call when nothing is pending."""
        assert self.transport is not None
        self.ledger.internal_query_sent()
        self.transport.write(pq.query(sql))

    def close(self, reason: str) -> None:
        """Close the backend connection now; the pool forgets it at once, so it is never handed out."""
        if self.state == ServerState.CLOSED:
            return
        transport = self.transport
        if transport is not None:
            if self.state not in (ServerState.CONNECTING, ServerState.LOGIN):
                transport.write(pq.TERMINATE_MESSAGE)
            transport.close()
        self._closed(reason)

    def _closed(self, reason: str) -> None:
        if not self.close_reason:
            self.close_reason = reason
        previous = self.pool.server_closing(self)
        if previous in (ServerState.CONNECTING, ServerState.LOGIN):
            self.pool.server_login_failed(self, self.login_error or {"C": "08006", "M": reason})
        else:
            self.pool.server_closed(self)

    # --- prepared statements: the client side records (self.statements), the tracked scanner answers ---

    def synthesize(self, code: int, payload: bytes, *, refuse: bool = False) -> None:
        """Answer a request for the server, in its place in the response order (see ServerStatements)."""
        segment = self.statements.add_synthesized(code, payload, refuse=refuse)
        if not self.ledger.pending and segment.head == len(segment.actions) - 1 and self.client is not None:
            out: list[bytes] = []  # nothing before it is owed: answer at once (the client may be waiting)
            ServerStatements.emit_synthesized(segment, out)
            self.client.write(b"".join(out))

    def _statements_forgotten(self) -> None:
        """DISCARD ALL / DEALLOCATE ALL ran: Postgres dropped every prepared statement of this session."""
        self.statements.prepared.clear()
        client = self.client
        if client is not None:
            client.statements.clear()

    def _command_tag(self, tag: bytes) -> None:
        """A CommandComplete tag that may change which statements Postgres holds (see pooler.core.prepared)."""
        if tag in _FORGET_STATEMENTS:
            self._statements_forgotten()
        elif tag == _DEALLOCATE_ONE and self.statements.prepared:
            self.stale = True  # maybe one of ours is gone: close this server instead of handing it out again

    def _statement_error(self, body: bytes) -> None:
        """An error names a pooler statement: repair the record (core.prepared.ServerStatements.repair)."""
        if self.statements.repair(body):
            self.stale = True

    def _data_tracked(self, data: bytes, pos: int) -> None:
        """The slow scanner, for chunks answering a tracked segment: every message is matched to its request."""
        n = len(data)
        out: list[bytes] = [data[:pos]] if pos else []  # the end of a row streamed from the last chunk
        self._skip = 0  # consumed just now; set again only if this chunk ends inside a streamed row
        ledger = self.ledger
        statements = self.statements
        emit = ServerStatements.emit_synthesized
        answered = 0
        while pos + 5 <= n:
            kind = data[pos]
            end = pos + 1 + _unpack_length(data, pos + 1)[0]
            head = ledger.head()
            if head is None:
                head = statements.open
            if end > n:
                if kind == DATA_ROW and ledger.swallow == 0 and (
                        not isinstance(head, Segment) or head.head >= len(head.actions)
                        or head.actions[head.head].mode == FORWARD):
                    out.append(data[pos:])  # a large row of a forwarded answer: stream it
                    self._skip = end - n
                    pos = n
                break
            if ledger.swallow:
                if kind == READY_FOR_QUERY:
                    ledger.ready_for_query(data[pos + 5])
                elif kind == PARAMETER_STATUS:
                    self._parameter_status(data[pos + 5 : end - 1])
                elif kind == ERROR_RESPONSE and self.client is not None:
                    self._parameters_refused(pq.parse_error_fields(data[pos + 5 : end]))
                    return
                elif kind == ERROR_RESPONSE:
                    self.stale = True  # the pooler's own reset or check failed: close, never reuse
                pos = end
                continue
            if kind in _PASS_THROUGH:
                if kind == PARAMETER_STATUS:
                    self._parameter_status(data[pos + 5 : end - 1])
                out.append(data[pos:end])
                pos = end
                continue
            if kind == ERROR_RESPONSE and (
                    data.startswith(_FATAL_PREFIX, pos + 5) or data.startswith(_PANIC_PREFIX, pos + 5)):
                self.fatal_seen = True
            elif kind == COMMAND_COMPLETE and end - pos - 1 in _FORGET_LENGTHS:
                self._command_tag(data[pos + 5 : end])
            elif kind == ERROR_RESPONSE and statements.prepared and data.find(b"pooler_", pos + 5, end) >= 0:
                self._statement_error(data[pos + 5 : end])
            elif kind == COPY_IN_RESPONSE:
                self._copy_in_started()
            if not isinstance(head, Segment):  # an untracked request: forwarded as is
                out.append(data[pos:end])
                if kind == READY_FOR_QUERY and ledger.ready_for_query(data[pos + 5]):
                    answered += 1
                pos = end
                continue
            emit(head, out)
            if kind == READY_FOR_QUERY:
                out.append(data[pos:end])
                if head is statements.open:  # cannot happen: a ReadyForQuery answers a Sync, which closed it
                    statements.open = None
                    ledger.ready_for_query(data[pos + 5])
                elif ledger.ready_for_query(data[pos + 5]):
                    answered += 1
                statements.inflight -= 1
            elif kind == ERROR_RESPONSE:
                out.append(data[pos:end])  # an error always reaches the client, even one to a hidden Parse
                statements.segment_failed(head, self.client.statements if self.client is not None else None)
            elif head.head < len(head.actions):
                action = head.actions[head.head]
                if action.mode == FORWARD:
                    out.append(data[pos:end])
                if action.code == DESCRIBE_STATEMENT and kind == ord("t"):
                    pass  # ParameterDescription; its RowDescription / NoData completes the Describe
                elif kind in _COMPLETES.get(action.code, b""):
                    head.head += 1
                    emit(head, out)
            else:
                out.append(data[pos:end])
            pos = end
        if pos < n:
            self._partial.keep(data, pos)
        if answered:
            self._count_answers(answered)
        client = self.client
        if client is None:
            if self.state == ServerState.BUSY and not ledger.swallow and not ledger.pending:
                self._start(self.pool.server_done_busy(self))
            return
        if out:
            payload = b"".join(out)
            self.stats.sent += len(payload)
            client.write(payload)
        if not ledger.pending and not ledger.swallow:
            client.server_ready_for_query(self)

    # --- login ------------------------------------------------------------------------------------

    def _login_data(self, data: bytes) -> None:
        reader = self._login_reader
        reader.feed(data)
        while True:
            try:
                message = reader.next_message()
            except pq.ProtocolViolationError as exc:
                self._login_failed({"C": "08P01", "M": f"server sent an invalid message during login: {exc}"})
                return
            if message is None:
                return
            kind, body = message
            if kind == pq.AUTHENTICATION:
                code = pq.read_int32(body)
                try:
                    reply = self.auth.receive(code, body[4:])
                except AuthFailed as exc:
                    self._login_failed({"C": "28000", "M": str(exc)})
                    return
                if reply:
                    assert self.transport is not None
                    self.transport.write(reply)
            elif kind == PARAMETER_STATUS:
                name, value = pq.parse_parameter_status(body)
                self.params[name] = value
            elif kind == pq.BACKEND_KEY_DATA:
                self.key = (pq.read_int32(body), pq.read_int32(body, 4))
            elif kind == ERROR_RESPONSE:
                self._login_failed(pq.parse_error_fields(body))
                return
            elif kind == READY_FOR_QUERY:
                self.params_key = self.pool.host.parameters.key(self.params)
                self.ledger.ready_for_query(body[0])
                remainder = reader.take_rest()
                # The client the server goes to starts before the rest is read: until it has sent its request,
                # the server owes nothing and the rest (a NOTIFY, say) would release it again under it.
                self._start(self.pool.server_logged_in(self))
                if remainder:
                    self.data_received(remainder)
                return
            # NoticeResponse and NegotiateProtocolVersion during login need no action.

    def _login_failed(self, fields: dict[str, str]) -> None:
        self.login_error = fields
        self.close(fields.get("M", "login failed"))
