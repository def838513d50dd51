"""TLS on a live connection, with the event loop's own TLS (``loop.start_tls``): both directions.

Towards clients there are two ways in. The classic one: an SSLRequest, answered ``S``, after which the
client starts the handshake; ``loop.start_tls`` on the accepted transport does the rest. Postgres 17's
direct TLS (``sslnegotiation=direct``): the client's first bytes already are the ClientHello, which the
pooler had to read to see what kind of connection this is. ``start_tls`` swaps the transport's protocol
for its TLS protocol and then reads from the socket; the bytes already read are handed to that protocol
through the ``asyncio.BufferedProtocol`` interface (``get_buffer``/``buffer_updated``), the same calls a
transport makes, once it is in place. CPython's and uvloop's TLS protocols are both BufferedProtocols.

Towards Postgres (``server_tls_sslmode``): a throwaway protocol sends the SSLRequest and reads the one
byte answer; then either ``start_tls`` (with SNI = the host name) or plaintext, and only then does the
``ServerConnection`` see its transport, so the login code is the same either way.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import cast

from pooler.core.pool import ServerState
from pooler.net.duck import as_protocol
from pooler.net.server import ServerConnection
from pooler.net.stream import HandedOver, SocketTransport, open_connection
from pooler.wire import messages as pq

#: Handshakes in progress: the loop keeps only weak references to tasks.
_HANDSHAKES: set[asyncio.Task[None]] = set()

#: The first byte of a TLS record carrying a handshake message (a ClientHello, from a direct-TLS client).
TLS_HANDSHAKE_RECORD = 0x16
TLS_RECORD_HEADER = 5
#: The largest TLS record (RFC 8446: 2^14 bytes of content, plus 256 of expansion; TLS 1.2 allowed 2048): a
#: length past it is the TLS layer's to refuse, not a reason to wait for more bytes.
MAX_TLS_RECORD = TLS_RECORD_HEADER + 2**14 + 2048


@dataclass(frozen=True, slots=True)
class ClientTls:
    """TLS towards clients: the context every handshake uses, and what a login needs from it."""

    context: ssl.SSLContext
    #: A plaintext client is refused ("SSL required"): client_tls_sslmode is require or stronger.
    required: bool
    #: The tls-server-end-point data of our certificate, for SCRAM-SHA-256-PLUS; None: not offered.
    channel_binding: bytes | None


@dataclass(frozen=True, slots=True)
class ServerTls:
    """TLS towards Postgres: the context (None for ``disable``) and whether a refusal is fatal."""

    context: ssl.SSLContext | None
    mode: str
    required: bool


def is_client_hello(first_byte: int | None) -> bool:
    """True when a connection's first byte starts a TLS handshake record (a direct-TLS ClientHello).

    A Postgres startup packet starts with its length, whose first byte is 0 for any length a client may
    send (at most ``MAX_STARTUP_PACKET``), so one byte tells them apart.
    """
    return first_byte == TLS_HANDSHAKE_RECORD


def first_record_size(head: bytes) -> int | None:
    """The size of the TLS record that ``head`` begins (its 5-byte header: type, version, length), or None
    until the header is whole. A direct-TLS ClientHello is handed to the TLS layer only once its record is
    whole: the client then waits for the server, so nothing it sends can reach another reader first.
    A size past ``MAX_TLS_RECORD`` is the TLS layer's to refuse, at once."""
    if len(head) < TLS_RECORD_HEADER:
        return None
    return TLS_RECORD_HEADER + int.from_bytes(head[3:5], "big")


def spawn(handshake: Coroutine[None, None, None]) -> None:
    """Run a connection's handshake coroutine as a task that cannot be garbage-collected mid-way."""
    task = asyncio.get_running_loop().create_task(handshake)
    _HANDSHAKES.add(task)
    task.add_done_callback(_HANDSHAKES.discard)


def describe_tls(transport: asyncio.BaseTransport | None) -> str:
    """SHOW CLIENTS / SHOW SERVERS' ``tls`` column, as PgBouncer fills it: ``TLSv1.3/TLS_AES_256_GCM_SHA384``;
    empty for a plaintext connection."""
    ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
    if ssl_object is None:
        return ""
    cipher = ssl_object.cipher()
    return f"{ssl_object.version()}/{cipher[0]}" if cipher else str(ssl_object.version() or "")


def is_unix(transport: asyncio.BaseTransport) -> bool:
    """A unix-socket connection: never TLS, and exempt from "SSL required" (as in PgBouncer)."""
    return isinstance(transport.get_extra_info("sockname"), str)


async def accept(transport: asyncio.Transport, protocol: asyncio.Protocol, context: ssl.SSLContext,
                 already_read: bytes, timeout: float | None, *, answer: bytes = b"") -> asyncio.Transport:
    """Run the server side of a TLS handshake on ``transport``; return the TLS transport.

    ``already_read``: handshake bytes the protocol had already received (a direct-TLS ClientHello, whole:
    the client sends nothing more before the server's answer). ``answer``: the plaintext byte that tells
    the client to begin (the "S" to an SSLRequest), sent only once the TLS layer reads the connection, so
    that the ClientHello it triggers reaches nothing else. Decrypted data goes to ``protocol.data_received``
    from the end of the handshake on, possibly before this returns. Raises OSError (ssl.SSLError,
    ConnectionError) or TimeoutError when the handshake fails.
    """
    loop = asyncio.get_running_loop()
    if isinstance(transport, SocketTransport):  # start_tls takes only the event loop's own transports
        transport = await transport.hand_over()
        if transport.is_closing():
            raise ConnectionResetError("the client hung up before the TLS handshake")
    before = transport.get_protocol()
    upgrade = loop.create_task(loop.start_tls(transport, protocol, context, server_side=True,
                                              ssl_handshake_timeout=timeout))
    try:
        await _tls_layer_in_place(transport, before)
        if answer:
            transport.write(answer)
        if isinstance(before, HandedOver):
            already_read += before.take()
        if already_read:
            await asyncio.sleep(0)  # the TLS protocol's connection_made: it is then in its handshake state
            _feed(transport, already_read)
    except BaseException:
        upgrade.cancel()
        raise
    upgraded = await upgrade
    if upgraded is None:
        raise ConnectionResetError("TLS handshake did not complete")
    return upgraded


async def _tls_layer_in_place(transport: asyncio.Transport, before: asyncio.BaseProtocol) -> None:
    # start_tls swaps the protocol synchronously on its first step, and schedules the TLS protocol's
    # connection_made (and the transport's resume_reading) for the next loop turn.
    for _ in range(100):
        await asyncio.sleep(0)
        if transport.get_protocol() is not before:
            return
    raise ConnectionError("the TLS layer did not take over the connection")


def _feed(transport: asyncio.Transport, data: bytes) -> None:
    """Hand ``data`` to the TLS protocol exactly as if the transport had just read it."""
    tls_protocol = cast(asyncio.BufferedProtocol, transport.get_protocol())
    view = memoryview(data)
    while view:
        buffer = memoryview(tls_protocol.get_buffer(len(view)))
        n = min(len(buffer), len(view))
        if n == 0:
            raise ConnectionError("the TLS layer offered no buffer")
        buffer[:n] = view[:n]
        tls_protocol.buffer_updated(n)
        view = view[n:]


class TlsRefusedError(ConnectionRefusedError):
    """Postgres answered the SSLRequest with ``N`` and server_tls_sslmode requires TLS."""


class _SslNegotiation(asyncio.Protocol):
    """Sends the SSLRequest and waits for the single byte answer; any more bytes are refused, since they
    arrived before the handshake and so could have been injected (CVE-2021-23222's lesson)."""

    def __init__(self) -> None:
        self.answer: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        cast(asyncio.Transport, transport).write(pq.SSL_REQUEST)

    def data_received(self, data: bytes) -> None:
        if self.answer.done():
            return
        if len(data) != 1 or data not in (b"S", b"N"):
            what = "received unencrypted data after SSL response" if data[:1] in (b"S", b"N") else (
                f"bad answer to SSLRequest ({data[:1]!r}): is host/port a Postgres server?")
            self.answer.set_exception(ConnectionError(what))
            return
        self.answer.set_result(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.answer.done():
            reason = exc or ConnectionResetError("server closed the connection during SSL negotiation")
            self.answer.set_exception(reason)


async def connect_server(server: ServerConnection, host: str, port: int, tls: ServerTls | None) -> None:
    """Open a TCP connection to Postgres for ``server``, with TLS as server_tls_sslmode says.

    Raises OSError (including ssl.SSLError, TlsRefusedError) when that fails; the caller reports it.
    """
    loop = asyncio.get_running_loop()
    if tls is None or tls.context is None:
        await open_connection(loop, as_protocol(server), host, port)
        return
    negotiation = _SslNegotiation()
    plain = await open_connection(loop, negotiation, host, port)
    transport: asyncio.Transport = cast(asyncio.Transport, plain)
    try:
        answer = await negotiation.answer
        if answer == b"S":
            transport = await plain.hand_over()  # start_tls takes only the event loop's own transports
            held = transport.get_protocol()
            if isinstance(held, HandedOver) and held.take():
                raise ConnectionError("received unencrypted data after SSL response")
            upgraded = await loop.start_tls(transport, as_protocol(server), tls.context, server_hostname=host)
            if upgraded is None:  # typeshed's Optional: the loop closed under us
                raise ConnectionResetError("TLS handshake with the server did not complete")
            transport = upgraded
        elif tls.required:
            raise TlsRefusedError(f"server refused SSL (server_tls_sslmode = {tls.mode}); turn ssl on in "
                                  "Postgres, or lower server_tls_sslmode")
        else:
            transport.set_protocol(as_protocol(server))
    except BaseException:
        transport.close()
        raise
    if server.state == ServerState.CLOSED:  # timed out or shut down while negotiating
        transport.close()
        return
    server.connection_made(transport)
