"""The WebSocket door: Postgres protocol bytes in binary frames, as Neon's serverless driver sends them.

Theory of operation. ``HttpConnection`` hands over the transport after it has read an upgrade request;
``WebSocketConnection`` answers it with wsproto (no subprotocol, any path: Neon accepts
``/v2?address=host:port`` and anything else) and from then on is a thin frame shell around an ordinary
pooled ``ClientConnection`` running over a ``PipeTransport``: binary frames' payloads go into the client's
scanner as they arrive (frame boundaries need not match message boundaries), what the client writes goes
out as one binary frame per write. A CancelRequest arriving on a new WebSocket is just a client whose
first packet is a CancelRequest.

Neon's driver connects "pipelined" by default: its StartupMessage, a cleartext PasswordMessage and its
first query arrive together, before any authentication request. When the bytes after the StartupMessage
of the first read are a PasswordMessage, the pooler therefore asks this client for a cleartext password
(as Neon does) and checks it against the user's secret like any login; otherwise (``pipelineConnect:
false``) the configured ``auth_type`` applies, SCRAM included.

Text frames are refused (close 1003) and a frame larger than ``websocket_max_frame_size`` ends the
connection (close 1009), each with a Postgres ErrorResponse first saying why; pings are answered;
a close frame is the client's EOF.
"""

from __future__ import annotations

import asyncio

import h11
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    Request,
    TextMessage,
)
from wsproto.utilities import RemoteProtocolError

from pooler.net.client import ClientConnection, ClientHost
from pooler.net.duck import as_protocol
from pooler.net.pipe import PipeTransport
from pooler.wire import messages as pq

#: Close codes (RFC 6455): normal, protocol error, unsupported data, message too big.
CLOSE_NORMAL = 1000
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_UNSUPPORTED_DATA = 1003
CLOSE_TOO_BIG = 1009


class WebSocketConnection(asyncio.Protocol):
    """One WebSocket carrying one Postgres session."""

    def __init__(self, pooler: ClientHost, transport: asyncio.Transport, ws: WSConnection) -> None:
        self.pooler = pooler
        self.transport: asyncio.Transport | None = transport
        self.ws = ws
        self.max_frame = pooler.config.settings.websocket_max_frame_size
        self.client = ClientConnection(pooler)
        self.client.http_ok = False
        self.pipe = PipeTransport(transport, as_protocol(self.client), self._send_binary, self._closed_by_client)
        self._frame_bytes = 0
        self._first = b""  # the bytes before the StartupMessage is whole (None once it was)
        self._deciding = True
        self._decide_later: asyncio.TimerHandle | None = None
        self._close_code = CLOSE_NORMAL
        self._close_reason = ""

    @classmethod
    def take_over(cls, pooler: ClientHost, transport: asyncio.Transport, request: h11.Request,
                  trailing: bytes) -> WebSocketConnection:
        """Accept the upgrade ``request`` (raises ValueError if it is not a valid one) and serve the socket."""
        ws = WSConnection(ConnectionType.SERVER)
        try:
            ws.initiate_upgrade_connection(list(request.headers), request.target)
            events = list(ws.events())
        except RemoteProtocolError as exc:
            raise ValueError(str(exc)) from None
        if not events or not isinstance(events[0], Request):
            raise ValueError("not a WebSocket handshake")
        transport.write(ws.send(AcceptConnection()))
        conn = cls(pooler, transport, ws)
        transport.set_protocol(conn)
        conn.pipe.start()
        if trailing:
            conn.data_received(trailing)
        return conn

    # --- asyncio.Protocol -----------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        ws = self.ws
        try:
            ws.receive_data(data)
            events = list(ws.events())
        except RemoteProtocolError as exc:
            self._refuse(CLOSE_PROTOCOL_ERROR, f"invalid WebSocket frame: {exc}")
            return
        chunks: list[bytes] = []
        for event in events:
            if isinstance(event, BytesMessage):
                self._frame_bytes += len(event.data)
                if self._frame_bytes > self.max_frame:
                    self._deliver(chunks)
                    self._refuse(CLOSE_TOO_BIG, f"WebSocket frame larger than websocket_max_frame_size "
                                 f"({self.max_frame} bytes)", hint="send smaller writes, or raise "
                                 "websocket_max_frame_size")
                    return
                if event.frame_finished:
                    self._frame_bytes = 0
                chunks.append(bytes(event.data))
            elif isinstance(event, TextMessage):
                self._deliver(chunks)
                self._refuse(CLOSE_UNSUPPORTED_DATA, "text WebSocket frames are not supported: Postgres protocol "
                             "bytes travel in binary frames", hint="use a Postgres driver over WebSocket, such as "
                             "@neondatabase/serverless")
                return
            elif isinstance(event, Ping):
                self._write(ws.send(event.response()))
            elif isinstance(event, CloseConnection):
                self._deliver(chunks)
                if ws.state is ConnectionState.REMOTE_CLOSING:
                    self._write(ws.send(event.response()))
                self._hang_up()
                self.pipe.lose(None)
                return
        self._deliver(chunks)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self._decide_later is not None:
            self._decide_later.cancel()
            self._deciding = False
        self.pipe.lose(exc)

    def pause_writing(self) -> None:
        self.client.pause_writing()

    def resume_writing(self) -> None:
        self.client.resume_writing()

    # --- the client's bytes --------------------------------------------------------------------

    def _deliver(self, chunks: list[bytes]) -> None:
        if not chunks:
            return
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        if self._deciding:
            # Wait for the whole StartupMessage, then look at what came with it.
            data = self._first = self._first + data
            length = pq.read_int32(data) if len(data) >= 4 else 0
            if len(data) < 4 or (8 <= length <= pq.MAX_STARTUP_PACKET and len(data) < length):
                return
            if len(data) == length and self._decide_later is None:
                # The StartupMessage alone: a pipelined password may be in the next read (a frame split by a
                # busy machine), or never come (pipelineConnect: false). Wait a moment before deciding.
                self._decide_later = asyncio.get_running_loop().call_later(PIPELINE_WAIT, self._decide)
                return
            self._decide()
            return
        self.pipe.feed(data)

    def _decide(self) -> None:
        """Cleartext login if a PasswordMessage came with the StartupMessage (Neon's pipelined connect)."""
        if not self._deciding:
            return
        if self._decide_later is not None:
            self._decide_later.cancel()
        self._deciding = False
        data, self._first = self._first, b""
        self.client.cleartext = _pipelined_password(data)
        self.pipe.feed(data)

    def _send_binary(self, data: bytes) -> None:
        if self.ws.state is ConnectionState.OPEN:
            self._write(self.ws.send(BytesMessage(data=data)))

    def _refuse(self, code: int, message: str, *, hint: str | None = None) -> None:
        """Tell the client why in its own protocol, then close the WebSocket with ``code``."""
        self._close_code, self._close_reason = code, message[:120]
        self.client.fatal("08P01", message, hint=hint)
        self._hang_up()  # in case the client was already closing

    def _closed_by_client(self) -> None:
        """The pooled client hung up: close the WebSocket properly, then the socket."""
        self._hang_up()

    def _hang_up(self) -> None:
        if self.ws.state is ConnectionState.OPEN:
            self._write(self.ws.send(CloseConnection(code=self._close_code, reason=self._close_reason)))
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.close()

    def _write(self, data: bytes) -> None:
        transport = self.transport
        if transport is not None and data:
            transport.write(data)


#: How long a StartupMessage that came alone waits for a pipelined PasswordMessage behind it (seconds).
PIPELINE_WAIT = 0.1


def _pipelined_password(data: bytes) -> bool:
    """True when ``data`` is a v3 StartupMessage directly followed by a PasswordMessage (pipelined connect)."""
    if len(data) < 9:
        return False
    length = pq.read_int32(data)
    return pq.read_int32(data, 4) == pq.PROTOCOL_3_0 and len(data) > length >= 8 and data[length] == pq.PASSWORD
