"""The HTTP door: Neon's SQL over HTTP (``POST /sql``, ``OPTIONS /sql``) and WebSocket upgrades.

Theory of operation. ``HttpConnection`` is an asyncio protocol around an h11 state machine. It is
installed either by a listener (``http_port``) or by a ``ClientConnection`` whose first bytes were an
HTTP request line (the pooled port serves Postgres and HTTP alike; see ``take_over``). It only ever
sees plaintext bytes through its transport, so it sits unchanged on a TLS transport.

One request at a time: a request that arrives while another is answered waits in h11 (HTTP/1.1 pipelining
is served in order); reading goes on, so a client that leaves is noticed (and its query cancelled) at
once, but pauses once more than a request's worth of bytes is waiting. ``POST /sql``
goes to a ``SqlSession`` (pooler.net.sql) kept for the connection's lifetime while the connection string
stays the same; a ``GET`` with ``Upgrade: websocket`` (any path, as Neon accepts) hands the transport to
``WebSocketConnection`` (pooler.net.websocket).

Limits, each a setting: ``http_max_header_size`` (431), ``http_max_body_size`` (413, whether the body
has a Content-Length or is chunked), ``http_max_response_size`` (507, in the session). A request that
is not complete within ``client_login_timeout`` of its first byte is answered 408 and the connection
closed (a slowloris client ties up one socket, never a server); between requests, a keep-alive
connection is closed after ``client_idle_timeout`` (when set).
"""

from __future__ import annotations

import asyncio
import enum
import json
import uuid
from http import HTTPStatus
from typing import Protocol, cast

import h11

from pooler.config import ADMIN_DATABASE
from pooler.log import log
from pooler.net.client import ClientHost
from pooler.net.sql import SessionState, SqlSession
from pooler.wire import neon_sql


class HttpHost(ClientHost, Protocol):
    """What the HTTP and WebSocket shells need from the process: what a pooled client needs (each request
    and WebSocket drives one), and the set of open HTTP connections (swept for timeouts, closed at stop)."""

    http_connections: set[HttpConnection]

SQL_PATH = "/sql"

#: What a browser may send to /sql (CORS preflight answer).
_CORS_HEADERS = [
    ("Access-Control-Allow-Origin", "*"),
    ("Access-Control-Allow-Methods", "POST, OPTIONS"),
    ("Access-Control-Allow-Headers", "Authorization, Content-Type, Neon-Connection-String, Neon-Raw-Text-Output, "
     "Neon-Array-Mode, Neon-Pool-Opt-In, Neon-Batch-Read-Only, Neon-Batch-Isolation-Level, Neon-Batch-Deferrable"),
    ("Access-Control-Max-Age", "86400"),
]


class Phase(enum.Enum):
    IDLE = 1  # keep-alive, waiting for the first byte of the next request
    READING = 2  # a request has started and is not complete (client_login_timeout runs)
    BUSY = 3  # a request is being answered
    CLOSED = 4


class HttpConnection(asyncio.Protocol):
    """One HTTP/1.1 connection to the pooler."""

    def __init__(self, pooler: HttpHost) -> None:
        self.pooler = pooler
        settings = pooler.config.settings
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=settings.http_max_header_size)
        self.transport: asyncio.Transport | None = None
        self.phase = Phase.READING
        self.since = pooler.clock()
        self.session: SqlSession | None = None
        self._request: h11.Request | None = None
        self._body = bytearray()
        self._upgrade = False
        self._unread = 0  # bytes received while a request is being answered

    @classmethod
    def take_over(cls, pooler: HttpHost, transport: asyncio.Transport, data: bytes) -> HttpConnection:
        """Install an HTTP connection on ``transport`` whose first bytes ``data`` were already read."""
        conn = cls(pooler)
        transport.set_protocol(conn)
        conn.connection_made(transport)
        conn.data_received(data)
        return conn

    # --- asyncio.Protocol -----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.pooler.http_connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.phase = Phase.CLOSED
        self.transport = None
        self.pooler.http_connections.discard(self)
        session, self.session = self.session, None
        if session is not None:
            session.client_gone()

    def data_received(self, data: bytes) -> None:
        if self.phase == Phase.CLOSED:
            return
        if self.phase == Phase.IDLE:
            self.phase = Phase.READING
            self.since = self.pooler.clock()
        elif self.phase == Phase.BUSY:
            # Pipelined requests wait in h11 until the answer is out. Reading goes on (so a client that
            # leaves is noticed and its query cancelled) until a request's worth of bytes is waiting.
            self._unread += len(data)
            settings = self.pooler.config.settings
            if self._unread > settings.http_max_header_size + settings.http_max_body_size and self.transport:
                self.transport.pause_reading()
        self.h11.receive_data(data)
        self._process()

    def eof_received(self) -> bool | None:
        self.h11.receive_data(b"")
        self._process()
        return None

    # --- requests -------------------------------------------------------------------------------

    def _process(self) -> None:
        settings = self.pooler.config.settings
        while self.phase in (Phase.READING, Phase.IDLE):
            try:
                event = self.h11.next_event()
            except h11.RemoteProtocolError as exc:
                status = exc.error_status_hint
                if "exceeds" in str(exc) or "too long" in str(exc) or "maximum" in str(exc):
                    status = 431
                self._error(status, f"malformed HTTP request: {exc}", close=True,
                            hint="send an HTTP/1.1 request; headers within http_max_header_size")
                return
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return
            if isinstance(event, h11.Request):
                if self.phase == Phase.IDLE:  # pipelined behind the previous one
                    self.phase = Phase.READING
                    self.since = self.pooler.clock()
                size = len(event.target) + sum(len(k) + len(v) + 4 for k, v in event.headers)
                if size > settings.http_max_header_size:
                    self._error(431, f"request headers of {size} bytes exceed http_max_header_size "
                                f"({settings.http_max_header_size})", close=True,
                                hint="send smaller headers, or raise http_max_header_size")
                    return
                self._request = event
                self._body.clear()
                if not self._accept(event):
                    return
                if self.h11.they_are_waiting_for_100_continue and self.transport is not None:
                    # curl waits a second for this before sending a body over 1 KiB
                    self.transport.write(self.h11.send(h11.InformationalResponse(status_code=100, headers=[])) or b"")
            elif isinstance(event, h11.Data):
                self._body += event.data
                if len(self._body) > settings.http_max_body_size:
                    self._too_large()
                    return
            elif isinstance(event, h11.EndOfMessage):
                self._dispatch()
            elif isinstance(event, h11.ConnectionClosed):
                self._close()
                return

    def _accept(self, request: h11.Request) -> bool:
        """Checks that need only the request line and headers; False when already answered."""
        path = request.target.decode("latin-1").split("?", 1)[0]
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in request.headers}
        self._upgrade = request.method == b"GET" and "websocket" in headers.get("upgrade", "").lower()
        if self._upgrade:
            return True
        if path != SQL_PATH:
            self._error(404, f"no such path: {path}", hint="send SQL with POST /sql, or open a WebSocket")
            return False
        if request.method not in (b"POST", b"OPTIONS"):
            self._error(405, f"method {request.method.decode('latin-1')} is not allowed on /sql",
                        hint="send POST /sql (or OPTIONS for CORS)", extra=[("Allow", "OPTIONS, POST")])
            return False
        length = headers.get("content-length")
        limit = self.pooler.config.settings.http_max_body_size
        if length is not None and length.isdigit() and int(length) > limit:
            self._too_large()
            return False
        return True

    def _too_large(self) -> None:
        limit = self.pooler.config.settings.http_max_body_size
        self._error(413, f"request body is larger than http_max_body_size ({limit} bytes)", close=True,
                    hint="send fewer or smaller queries, or raise http_max_body_size")

    def _dispatch(self) -> None:
        request = self._request
        assert request is not None
        if self._upgrade:
            self._websocket(request)
            return
        if request.method == b"OPTIONS":
            self._respond(200, b"", _CORS_HEADERS, content_type=None)
            return
        self.phase = Phase.BUSY
        self._unread = 0
        assert self.transport is not None
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in request.headers}
        try:
            sql = neon_sql.parse_request(headers, bytes(self._body))
        except neon_sql.SqlRequestError as exc:
            self._answer(exc.status, exc.fields, None, [])
            return
        self._body.clear()
        if sql.target.database == ADMIN_DATABASE:
            self._answer(400, {"M": "the admin console is not served over HTTP", "C": "08P01", "S": "ERROR",
                               "H": f"connect with psql to the {ADMIN_DATABASE} database"}, None, [])
            return
        session = self.session
        if session is not None and (session.state not in (SessionState.LOGIN, SessionState.READY)
                                    or session.target.key != sql.target.key):
            session.close()
            session = None
        if session is None:
            session = self.session = SqlSession(self.pooler, self.transport, sql.target)
        echo = sql.echo_headers
        session.run(sql, lambda status, fields, body: self._answer(status, fields, body, echo))

    def _websocket(self, request: h11.Request) -> None:
        from pooler.net.websocket import WebSocketConnection

        transport = self.transport
        assert transport is not None
        trailing, _ = self.h11.trailing_data
        self.phase = Phase.CLOSED
        self.pooler.http_connections.discard(self)
        session, self.session = self.session, None
        if session is not None:
            session.close()
        try:
            WebSocketConnection.take_over(self.pooler, transport, request, bytes(trailing))
        except ValueError as exc:
            self.phase = Phase.BUSY
            self.pooler.http_connections.add(self)
            self._error(400, f"invalid WebSocket upgrade: {exc}", close=True,
                        hint="open the WebSocket with a standard client (Sec-WebSocket-Key, version 13)")

    # --- responses ------------------------------------------------------------------------------

    def _answer(self, status: int, fields: dict[str, str] | None, body: bytes | None,
                extra: list[tuple[str, str]]) -> None:
        if fields is not None:
            body = json.dumps(neon_sql.error_json(fields), ensure_ascii=False, separators=(",", ":")).encode()
            if status >= 500:
                log.warning("sql over http failed", status=status, error=fields.get("M"))
        self._respond(status, body or b"", extra)

    def _error(self, status: int, message: str, *, close: bool = False, hint: str | None = None,
               extra: list[tuple[str, str]] | None = None) -> None:
        code = "54000" if status in (413, 431, 507) else "08P01"
        fields = {"M": message, "C": code, "S": "ERROR"}
        if hint:
            fields["H"] = hint
        self.pooler.pooler_error(None, code, message)
        body = json.dumps(neon_sql.error_json(fields), separators=(",", ":")).encode()
        self._respond(status, body, extra or [], close=close)

    def _respond(self, status: int, body: bytes, extra: list[tuple[str, str]], *, close: bool = False,
                 content_type: str | None = "application/json") -> None:
        settings = self.pooler.config.settings
        transport = self.transport
        if transport is None or self.phase == Phase.CLOSED:
            return
        headers = [("Access-Control-Allow-Origin", "*"), ("Neon-Request-Id", str(uuid.uuid4()))]
        if content_type is not None:
            headers.append(("Content-Type", content_type))
        headers += [h for h in extra if h[0] != "Access-Control-Allow-Origin"]
        headers.append(("Content-Length", str(len(body))))
        close = close or self.h11.their_state is not h11.DONE  # an early answer: the rest is not read
        if close:
            headers.append(("Connection", "close"))
        try:
            reason = HTTPStatus(status).phrase.encode()
        except ValueError:
            reason = b""
        try:
            out = self.h11.send(h11.Response(status_code=status, headers=headers, reason=reason))
            out = (out or b"") + (self.h11.send(h11.Data(data=body)) or b"") + (
                self.h11.send(h11.EndOfMessage()) or b"")
        except h11.LocalProtocolError as exc:
            log.warning("http response could not be sent", error=str(exc))
            self._close()
            return
        transport.write(out)
        if close or self.h11.our_state is not h11.DONE:
            self._close()
            return
        self.h11.start_next_cycle()
        self.phase = Phase.IDLE
        self.since = self.pooler.clock()
        self._request = None
        if self._unread > settings.http_max_header_size + settings.http_max_body_size:
            transport.resume_reading()
        self._unread = 0
        asyncio.get_running_loop().call_soon(self._process)  # a pipelined next request, not recursively

    def _close(self) -> None:
        transport = self.transport
        if self.phase == Phase.CLOSED and transport is None:
            return
        self.phase = Phase.CLOSED
        if transport is not None:
            transport.close()

    # --- timeouts (called by the pooler's sweep) -----------------------------------------------

    def sweep(self, now: float) -> None:
        settings = self.pooler.config.settings
        if self.phase == Phase.READING:
            limit = settings.client_login_timeout
            if limit and now - self.since > limit:
                self._error(408, "client_login_timeout: the HTTP request did not arrive in time", close=True,
                            hint="send the whole request at once")
        elif self.phase == Phase.IDLE:
            limit = settings.client_idle_timeout
            if limit and now - self.since > limit:
                self._close()

    def shutdown(self) -> None:
        session, self.session = self.session, None
        if session is not None:
            session.client_gone()
        self._close()
