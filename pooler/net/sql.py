"""One SQL-over-HTTP session: an ordinary pooled client, driven by HTTP requests instead of a socket.

Theory of operation. A ``SqlSession`` owns a ``ClientConnection`` running over a ``PipeTransport``. It
logs in like any client — StartupMessage, then the password of ``Neon-Connection-String`` when the
pooler asks for one (the client is marked ``cleartext``: the pooler checks that password against
auth_file / auth_query like a cleartext login, whatever ``auth_type`` says, because the password is all
an HTTP request has) — and then sends each request's messages (``pooler.wire.neon_sql``). From there
the pooled client does what it does for TCP: queue FIFO for a server of its (database, user) pool,
query_wait_timeout, query_timeout, session-state checks, SHOW CLIENTS, stats. The backend messages it
writes come back here and go through a ``ResultCollector`` into Neon's JSON.

A session stays logged in behind its keep-alive HTTP connection while the connection string stays
the same (a pooled client that is idle between transactions holds no server), so a keep-alive caller
pays the login once, like a TCP client. Bytes to the client are fed on the next loop iteration, never
from inside the client's own write.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Callable

from pooler.net.client import ClientConnection, ClientHost
from pooler.net.duck import as_protocol
from pooler.net.pipe import PipeTransport
from pooler.wire import messages as pq
from pooler.wire import neon_sql
from pooler.wire.framing import BadLengthError, MessageReader


class SessionState(enum.Enum):
    LOGIN = 1
    READY = 2
    BUSY = 3
    CLOSED = 4


#: (status, body fields or None, JSON body or None): what a request's answer is made of.
Reply = Callable[[int, dict[str, str] | None, bytes | None], None]


class SqlSession:
    """A pooled client behind one HTTP connection, for one connection string."""

    def __init__(self, pooler: ClientHost, outer: asyncio.Transport, target: neon_sql.Target) -> None:
        self.pooler = pooler
        self.target = target
        self.client = ClientConnection(pooler)
        self.client.cleartext = True
        self.client.http_ok = False
        self.pipe = PipeTransport(outer, as_protocol(self.client), self._received, self._closed_by_pooler)
        self.state = SessionState.LOGIN
        # A DataRow larger than the response limit could never be answered: it fails as "too large".
        self._reader = MessageReader(pooler.config.settings.http_max_response_size + 1024)
        self._login_error: dict[str, str] | None = None
        self._collector: neon_sql.ResultCollector | None = None
        self._reply: Reply | None = None
        self._pending = b""
        self.pipe.start()
        self._send(pq.startup_message(neon_sql.startup_parameters(target)))

    @property
    def in_flight(self) -> bool:
        return self._reply is not None

    def run(self, request: neon_sql.SqlRequest, reply: Reply) -> None:
        """Run ``request``; ``reply`` is called once with its answer."""
        max_bytes = self.pooler.config.settings.http_max_response_size
        self._collector = neon_sql.ResultCollector(request, max_bytes)
        self._reply = reply
        messages = neon_sql.request_messages(request)
        if self.state == SessionState.READY:
            self.state = SessionState.BUSY
            self._send(messages)
        else:
            self._pending = messages

    def close(self) -> None:
        """End the session politely (Terminate), as a client that is done would."""
        if self.state == SessionState.READY:
            self.state = SessionState.CLOSED
            self._send(pq.TERMINATE_MESSAGE)
        elif self.state != SessionState.CLOSED:
            self.client_gone()

    def client_gone(self) -> None:
        """The HTTP client went away: the pooled client disconnects now (a query in flight is cancelled)."""
        self.state = SessionState.CLOSED
        self._reply = None
        self.pipe.lose(None)

    # --- from the pooled client ------------------------------------------------------------------

    def _send(self, data: bytes) -> None:
        asyncio.get_running_loop().call_soon(self.pipe.feed, data)

    def _received(self, data: bytes) -> None:
        reader = self._reader
        reader.feed(data)
        try:
            while (message := reader.next_message()) is not None:
                kind, payload = message
                if self.state == SessionState.BUSY:
                    self._result_message(kind, payload)
                elif self.state == SessionState.LOGIN:
                    self._login_message(kind, payload)
        except BadLengthError as exc:
            limit = self.pooler.config.settings.http_max_response_size
            self._finish(507, {"M": f"response is too large (max is {limit} bytes)", "C": "54000", "S": "ERROR",
                               "H": "select fewer rows or columns, or raise http_max_response_size",
                               "D": str(exc)}, None)
            self._abort()
        except pq.ProtocolViolationError as exc:
            self._finish(500, {"M": f"internal error: {exc}", "C": "XX000", "S": "ERROR"}, None)
            self._abort()
        except neon_sql.ResponseTooLargeError as exc:
            self._finish(507, {"M": str(exc), "C": "54000", "S": "ERROR",
                               "H": "select fewer rows or columns, or raise http_max_response_size"}, None)
            self._abort()

    def _login_message(self, kind: int, payload: bytes) -> None:
        if kind == pq.AUTHENTICATION:
            code = pq.read_int32(payload)
            if code == pq.AUTH_CLEARTEXT:
                self._send(pq.password_message(self.target.password or ""))
        elif kind == pq.ERROR_RESPONSE:
            self._login_error = pq.parse_error_fields(payload)
        elif kind == pq.READY_FOR_QUERY:
            self.state = SessionState.READY
            if self._pending:
                self.state = SessionState.BUSY
                self._send(self._pending)
                self._pending = b""

    def _result_message(self, kind: int, payload: bytes) -> None:
        collector = self._collector
        assert collector is not None
        answer = collector.feed(kind, payload)
        if answer:
            self._send(answer)
        if collector.done:
            self.state = SessionState.READY
            if collector.error is not None:
                self._finish(400, collector.error, None)
            else:
                self._finish(200, None, collector.body())

    def _finish(self, status: int, fields: dict[str, str] | None, body: bytes | None) -> None:
        reply, self._reply = self._reply, None
        self._collector = None
        if reply is not None:
            reply(status, fields, body)

    def _abort(self) -> None:
        """Drop the pooled client mid-request: the pool cancels its query and closes the server."""
        if self.state != SessionState.CLOSED:
            self.state = SessionState.CLOSED
            self.pipe.close()

    def _closed_by_pooler(self) -> None:
        """The pooled client hung up (a FATAL it already wrote, or a Terminate we sent)."""
        self.state = SessionState.CLOSED
        if self._reply is None:
            return
        collector = self._collector
        error = (collector.error if collector is not None else None) or self._login_error
        if error is not None:
            self._finish(400, error, None)
        else:
            self._finish(500, {"M": "the pooler closed the session before the query finished", "C": "08006",
                               "S": "ERROR"}, None)
