"""The transport under the Postgres-protocol connections that carry no TLS: a non-blocking socket the event
loop watches with ``add_reader`` / ``add_writer``, read with read(2) and written with write(2).

Why not uvloop's own TCP transport, which every other connection uses: per message it reads through libuv
into libuv's buffer, then dispatches through its stream machinery, and writes through its write queue.
Compiled, this transport is one C call from readiness to ``read`` and one from ``write`` to the system
call. What that buys is mostly memory: an idle connection costs about 920 B of RSS on it against 1,253 B
on a uvloop transport (``python -m benchmarks.idle_floor 10000``). In CPU, the bare forwarder
(``python -m benchmarks.pgbench_compare --bare``) spends 1.3 + 12.8 µs (user + system) per
``pgbench -S -c 50`` transaction on it against 1.3 + 13.0 on uvloop's: the readiness callback and the
protocol calls above it cost the same on both.

What it is: asyncio's selector transport (``asyncio.selector_events._SelectorSocketTransport``) cut to what
the connection shells use, with the same contract:
- ``connection_made`` first, ``connection_lost`` once, always from a later loop turn;
- EOF goes to ``eof_received``, and a falsy answer closes;
- ``pause_reading`` / ``resume_reading``;
- ``pause_writing`` / ``resume_writing`` at the write-buffer limits;
- ``close`` flushes what is buffered first, then half-closes and drains the socket so that the peer can
  read those last bytes (``_linger``); ``abort`` does neither.

What it is not: TLS. uvloop's ``start_tls`` takes only uvloop's own transports, so a connection that
starts TLS first moves to one (``hand_over``).

Pure Python (no compiler, or ``POOLER_NO_EXTENSIONS=1``) reads and writes with the socket's own methods,
with the same behaviour.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno as errnos
import os
import socket
from collections.abc import Callable
from typing import Any, cast

from pooler.log import log

try:
    import cython  # type: ignore[import-untyped,unused-ignore]
except ImportError:  # installed without Cython: this is the pure-Python module anyway

    class cython:  # type: ignore[no-redef]  # noqa: N801
        compiled = False


if cython.compiled:
    from cython.cimports.libc.errno import EAGAIN, EINTR, errno
    from cython.cimports.posix.unistd import read as c_read
    from cython.cimports.posix.unistd import write as c_write

#: The most one read takes: what a busy server's answers fill, and what a uvloop transport reads at most.
READ_SIZE = 262_144
#: The one buffer every compiled read lands in (the loop runs one callback at a time); each read's bytes are
#: then copied out into a ``bytes`` of their own size, as uvloop does.
_READ_BUFFER = bytearray(READ_SIZE)
#: asyncio's default write-buffer limits (the shells set their own).
DEFAULT_HIGH_WATER = 65_536
#: Accepts per readiness of a listening socket: a burst of connections is taken in few loop turns, and one
#: listener does not starve the others.
ACCEPTS_PER_TURN = 128
#: How long accepting pauses when the process is out of file descriptors (as asyncio's servers do).
ACCEPT_RETRY_DELAY = 1.0
#: SocketTransport._successor while hand_over waits for the new transport, and once a close came meanwhile.
_HANDING_OVER = "handing over"
_CLOSE_WANTED = "close wanted"
#: How long a socket this side closed keeps reading (and dropping) what the peer still sends. Closed with
#: bytes unread, a socket answers with a reset, and a peer whose next send meets it may never read our last
#: words (a FATAL); half-closed and drained, it reads them, then EOF. The peer usually hangs up at once.
LINGER_SECONDS = 2.0
_OUT_OF_RESOURCES = frozenset({errnos.EMFILE, errnos.ENFILE, errnos.ENOBUFS, errnos.ENOMEM})


class SocketTransport:
    """One connected, non-blocking stream socket (TCP or Unix) as an asyncio transport."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket, protocol: asyncio.BaseProtocol) -> None:
        sock.setblocking(False)
        self._loop = loop
        self._sock: socket.socket | None = sock
        self._fd = sock.fileno()
        self._protocol: Any = protocol
        # What the socket has not taken yet, in order; None while that is nothing (most connections, always).
        self._pending: list[bytes] | None = None
        self._pending_size = 0
        self._offset = 0  # bytes of _pending[0] already sent: the rest goes from there, never copied again
        self._high = DEFAULT_HIGH_WATER
        self._low = DEFAULT_HIGH_WATER // 4
        self._closing = False
        self._reading = True  # wanted; whether the loop watches the socket follows it while open
        self._writing_paused = False  # the protocol was told pause_writing
        self._eof_pending = False  # write_eof once the buffer is flushed
        self._lost = False  # connection_lost is scheduled (or done)
        # After hand_over: the transport that owns the socket now (None before; _HANDING_OVER meanwhile;
        # _CLOSE_WANTED if close or abort came meanwhile), which close, abort and get_extra_info reach.
        self._successor: Any = None
        protocol.connection_made(cast(asyncio.BaseTransport, self))
        if self._reading and not self._closing:
            try:
                loop.add_reader(self._fd, self._read_ready)
            except Exception as exc:  # the loop cannot watch the socket: the protocol, told it is made, hears why
                self._reading = False
                self._force_close(exc)

    # --- reading ----------------------------------------------------------------------------------

    def _read_ready(self) -> None:
        if cython.compiled:
            space = _READ_BUFFER
            buffer = cython.declare(cython.p_char, space)
            n = cython.declare(cython.Py_ssize_t, c_read(self._fd, buffer, READ_SIZE))
            if n < 0:
                code = cython.declare(cython.int, errno)
                if code in (EAGAIN, EINTR):
                    return
                self._force_close(OSError(code, os.strerror(code)))
                return
            data = buffer[:n]
        else:
            sock = self._sock
            if sock is None:
                return
            try:
                data = sock.recv(READ_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._force_close(exc)
                return
        try:
            if data:
                self._protocol.data_received(data)
                return
            # EOF: the protocol may keep its half open (True), else the transport closes, as asyncio's does
            self._stop_reading()
            if not self._protocol.eof_received():
                self.close()
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:  # a bug in the protocol: its connection goes, as on asyncio's and uvloop's
            self._force_close(exc)
            self._report(exc, "data_received" if data else "eof_received")

    def _report(self, exc: BaseException, call: str) -> None:
        """A protocol callback raised: the loop's exception handler hears of it (the loop's own transports
        do the same), not whoever happened to call into the transport."""
        self._loop.call_exception_handler({"message": f"protocol.{call}() call failed", "exception": exc,
                                           "transport": self, "protocol": self._protocol})

    def pause_reading(self) -> None:
        if self._reading:
            self._reading = False
            if not self._closing:
                self._loop.remove_reader(self._fd)

    def resume_reading(self) -> None:
        if not self._reading:
            self._reading = True
            if not self._closing:
                self._loop.add_reader(self._fd, self._read_ready)

    def is_reading(self) -> bool:
        return self._reading and not self._closing

    def _stop_reading(self) -> None:
        if self._reading:
            self._reading = False
            self._loop.remove_reader(self._fd)

    # --- writing ----------------------------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing or self._eof_pending or not data:
            return  # asyncio warns and drops too: the protocol has been (or will be) told the connection is gone
        if type(data) is not bytes:
            data = bytes(data)
        if self._pending is not None:
            self._pending.append(data)
            self._pending_size += len(data)
            self._check_high_water()
            return
        sent = self._send(data, 0)
        if sent < 0:
            return  # a fatal error: the connection is being closed
        if sent == len(data):
            return
        self._pending = [data[sent:]]
        self._pending_size = len(data) - sent
        self._loop.add_writer(self._fd, self._write_ready)
        self._check_high_water()

    def writelines(self, chunks: Any) -> None:
        self.write(b"".join(chunks))

    def _send(self, data: bytes, offset: int) -> int:
        """Bytes of ``data`` from ``offset`` on the socket took now (0 when full); -1 after a fatal error."""
        if cython.compiled:
            start = cython.declare(cython.p_char, data)
            n: int = cython.declare(cython.Py_ssize_t, c_write(self._fd, start + offset, len(data) - offset))
            if n >= 0:
                return n
            code = cython.declare(cython.int, errno)
            if code in (EAGAIN, EINTR):
                return 0
            self._force_close(OSError(code, os.strerror(code)))
            return -1
        else:
            sock = self._sock
            if sock is None:
                return -1
            try:
                return sock.send(memoryview(data)[offset:] if offset else data)
            except (BlockingIOError, InterruptedError):
                return 0
            except OSError as exc:
                self._force_close(exc)
                return -1

    def _write_ready(self) -> None:
        pending = self._pending
        if pending is None:
            return
        if len(pending) > 1:  # writes queued up behind a partial one: one buffer, one system call
            rest = memoryview(pending[0])[self._offset:]
            pending = self._pending = [b"".join([rest, *pending[1:]])]
            self._offset = 0
        sent = self._send(pending[0], self._offset)
        if sent < 0:
            return
        self._pending_size -= sent
        if self._pending_size:
            self._offset += sent
        else:
            self._pending = None
            self._offset = 0
            self._loop.remove_writer(self._fd)
        if self._writing_paused and self._pending_size <= self._low:
            self._writing_paused = False
            try:
                self._protocol.resume_writing()
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:  # reported; the flush (and a close waiting for it) goes on
                self._report(exc, "resume_writing")
        if self._pending_size:
            return
        if self._closing:
            self._schedule_lost(None, linger=True)
        elif self._eof_pending:
            self._shutdown_write()

    def _check_high_water(self) -> None:
        if not self._writing_paused and self._pending_size > self._high:
            self._writing_paused = True
            try:
                self._protocol.pause_writing()
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:  # reported; the bytes written are kept
                self._report(exc, "pause_writing")

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        if high is None:
            high = DEFAULT_HIGH_WATER if low is None else 4 * low
        if low is None:
            low = high // 4
        if not high >= low >= 0:
            raise ValueError(f"high ({high!r}) must be >= low ({low!r}) must be >= 0")
        self._high, self._low = high, low
        self._check_high_water()

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._low, self._high

    def get_write_buffer_size(self) -> int:
        return self._pending_size

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        if self._closing or self._eof_pending:
            return
        self._eof_pending = True
        if not self._pending_size:
            self._shutdown_write()

    def _shutdown_write(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_WR)

    # --- closing ----------------------------------------------------------------------------------

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        """Stop reading; once what is buffered is written, close and tell the protocol (a later loop turn)."""
        if self._successor is not None:
            self._close_successor()
            return
        if self._closing:
            return
        self._closing = True
        self._stop_reading()
        if not self._pending_size:
            self._schedule_lost(None, linger=True)

    def abort(self) -> None:
        if self._successor is not None:
            self._close_successor()
            return
        self._force_close(None)

    def _close_successor(self) -> None:
        """A close after hand_over: whoever still holds this transport (a connection mid-TLS-handshake,
        closed by client_login_timeout or a shutdown) means the socket, which the successor owns."""
        successor = self._successor
        if successor is _HANDING_OVER:
            self._successor = _CLOSE_WANTED
        elif successor is not _CLOSE_WANTED:
            successor.close()

    def _force_close(self, exc: BaseException | None) -> None:
        """The connection is over without a flush: abort, a failed read or write (a reset, a broken pipe),
        or a protocol callback that raised."""
        if self._lost:
            return
        if self._pending is not None:
            self._pending = None
            self._pending_size = self._offset = 0
            self._loop.remove_writer(self._fd)
        self._closing = True
        self._stop_reading()
        self._schedule_lost(exc)

    def _schedule_lost(self, exc: BaseException | None, *, linger: bool = False) -> None:
        """``linger``: a close after a flush, whose last bytes the peer must be able to read (``_linger``);
        an abort or a failed socket closes at once."""
        if not self._lost:
            self._lost = True
            self._loop.call_soon(self._connection_lost, exc, linger)

    def _connection_lost(self, exc: BaseException | None, linger: bool) -> None:
        try:
            self._protocol.connection_lost(exc)
        finally:
            sock, self._sock, self._fd = self._sock, None, -1
            if sock is not None:
                if linger:
                    _linger(self._loop, sock)
                else:
                    sock.close()

    # --- the rest of asyncio.Transport ------------------------------------------------------------

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        successor = self._successor
        if successor is not None and successor is not _HANDING_OVER and successor is not _CLOSE_WANTED:
            return successor.get_extra_info(name, default)
        sock = self._sock
        if sock is None:
            return default
        try:
            if name == "socket":
                return sock
            if name == "sockname":
                return sock.getsockname()
            if name == "peername":
                return sock.getpeername()
        except OSError:
            return default
        return default

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        return cast(asyncio.BaseProtocol, self._protocol)

    async def hand_over(self) -> asyncio.Transport:
        """Move this connection to one of the event loop's own transports (TLS needs one); this transport
        is done afterwards, without a ``connection_lost``.

        The new transport's protocol is a ``HandedOver`` placeholder (``start_tls`` sets the real one),
        which holds whatever the peer sent meanwhile, for the caller to feed to what comes next.
        """
        sock = self._sock
        if sock is None or self._closing:
            raise ConnectionResetError("the connection closed before TLS could start")
        self._stop_reading()
        if self._pending_size:
            self._loop.remove_writer(self._fd)
        pending = b"".join(self._pending)[self._offset:] if self._pending is not None else b""
        self._pending, self._pending_size, self._offset = None, 0, 0
        self._closing = self._lost = True
        self._sock = None
        self._fd = -1
        self._successor = _HANDING_OVER
        try:
            transport, _ = await self._loop.connect_accepted_socket(HandedOver, sock)
        except BaseException:
            sock.close()  # nobody else holds it now
            raise
        close_wanted = self._successor is _CLOSE_WANTED
        self._successor = transport
        if not transport.is_closing():
            transport.pause_reading()  # uvloop starts reading after connection_made: stop it here
        if pending:
            transport.write(pending)
        if close_wanted:
            transport.close()  # closed while the socket moved: the caller finds the new transport closing
        return transport


def _linger(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
    """Close ``sock`` without a reset: send our EOF, drop whatever the peer still sends until its own EOF
    (or ``LINGER_SECONDS``), then close. The transport and its protocol are already done with it."""
    try:
        sock.shutdown(socket.SHUT_WR)
    except OSError:  # reset or gone already: nothing to wait for
        sock.close()
        return
    fd = sock.fileno()

    def finish() -> None:
        if sock.fileno() != -1:
            loop.remove_reader(fd)
            deadline.cancel()
            sock.close()

    def drain() -> None:
        while True:
            try:
                if not sock.recv(READ_SIZE):
                    break  # the peer's EOF
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                break
        finish()

    deadline = loop.call_later(LINGER_SECONDS, finish)
    loop.add_reader(fd, drain)


class HandedOver(asyncio.Protocol):
    """The protocol of a connection just handed over (``SocketTransport.hand_over``): holds what arrived
    before its reading could be paused, until TLS takes the connection."""

    def __init__(self) -> None:
        self.received = bytearray()

    def data_received(self, data: bytes) -> None:
        self.received += data

    def take(self) -> bytes:
        data = bytes(self.received)
        self.received.clear()
        return data


class SocketServer:
    """A listening socket whose connections get a ``SocketTransport`` each: what ``asyncio.Server`` is for
    the event loop's own transports, as far as the pooler uses one (``sockets``, ``close``, ``wait_closed``).
    Closing it stops accepting; the connections it accepted live on."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket,
                 protocol_factory: Callable[[], asyncio.BaseProtocol]) -> None:
        sock.setblocking(False)
        self._loop = loop
        self._sock = sock
        self._factory = protocol_factory
        self._closed = False
        self._retry: asyncio.TimerHandle | None = None
        loop.add_reader(sock.fileno(), self._accept)

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        return () if self._closed else (self._sock,)

    def _accept(self) -> None:
        for _ in range(ACCEPTS_PER_TURN):
            try:
                conn, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError as exc:
                if exc.errno in _OUT_OF_RESOURCES:
                    # Out of file descriptors: the backlog keeps the rest; try again later rather than spin.
                    self._loop.remove_reader(self._sock.fileno())
                    self._retry = self._loop.call_later(ACCEPT_RETRY_DELAY, self._resume)
                return
            try:
                SocketTransport(self._loop, conn, self._factory())
            except OSError:
                conn.close()  # reset before it could be set up: nobody to tell
            except Exception as exc:  # a bug in a protocol's setup: this connection goes, the listener stays
                conn.close()
                log.error("could not set up an accepted connection", error=f"{type(exc).__name__}: {exc}")

    def _resume(self) -> None:
        self._retry = None
        if not self._closed:
            self._loop.add_reader(self._sock.fileno(), self._accept)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._retry is not None:
            self._retry.cancel()
        self._loop.remove_reader(self._sock.fileno())
        self._sock.close()

    async def wait_closed(self) -> None:
        """Nothing to wait for: ``close`` closed the socket (the accepted connections are not waited for)."""


def listening_sockets(hosts: str | list[str], port: int, *, backlog: int, reuse_port: bool) -> list[socket.socket]:
    """Bound, listening TCP sockets for ``hosts`` on ``port``, as ``loop.create_server`` makes them (IPv6
    sockets are v6-only, so ``0.0.0.0`` and ``::`` can share a port). With port 0, the first socket's
    port is used for all the others, so that the hosts share one port."""
    sockets: list[socket.socket] = []
    unsupported: OSError | None = None
    try:
        for host in [hosts] if isinstance(hosts, str) else hosts:
            infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
            for family, kind, proto, _, address in dict.fromkeys(infos):
                try:
                    sock = socket.socket(family, kind, proto)
                except OSError as exc:  # a family this kernel lacks (IPv6 off): skipped, as create_server does
                    unsupported = exc
                    continue
                sockets.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if reuse_port:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                where = (address[0], sockets[0].getsockname()[1], *address[2:]) if port == 0 and len(sockets) > 1 \
                    else address
                try:
                    sock.bind(where)
                except OSError as exc:
                    raise OSError(exc.errno, f"error while attempting to bind on address {where!r}: "
                                  f"{(exc.strerror or str(exc)).lower()}") from None
                sock.listen(backlog)
        if not sockets and unsupported is not None:
            raise unsupported
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


async def open_connection(loop: asyncio.AbstractEventLoop, protocol: asyncio.BaseProtocol, host: str | None,
                          port: int, path: str | None = None) -> SocketTransport:
    """Connect to ``host``:``port`` over TCP (each address in turn), or to the Unix socket ``path``, and give
    ``protocol`` the connection. Raises OSError (the last address's) when none answers."""
    if path is not None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            # A Unix socket connects at once or not at all: EAGAIN means its backlog is full, an error (as
            # libuv's connect has it), not "in progress" (sock_connect would wait for a socket that is
            # writable at once and never connected).
            sock.connect(path)
        except BaseException:
            sock.close()
            raise
        return SocketTransport(loop, sock, protocol)
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    if not infos:
        raise OSError(f"getaddrinfo({host!r}) returned nothing")
    last: OSError | None = None
    for family, kind, proto, _, address in infos:
        sock = socket.socket(family, kind, proto)
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            await loop.sock_connect(sock, address)
        except OSError as exc:
            sock.close()
            last = exc
            continue
        except BaseException:
            sock.close()
            raise
        return SocketTransport(loop, sock, protocol)
    assert last is not None
    raise last
