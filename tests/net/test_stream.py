"""The socket transport (pooler.net.stream) keeps asyncio's transport contract, over real sockets on uvloop.

Every connection of the pooled and direct ports and every plaintext server connection runs on it, so the
contract the shells rely on is checked here directly, in both builds (CI runs tests/net compiled and pure):
the order of the protocol calls, flow control at the write-buffer limits, a close that flushes, an abort
that does not, EOF, resets, and the hand-over to the event loop's own transport that TLS needs.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import struct
from typing import Any, cast

import psycopg
import pytest
from harness import make_config, running_pooler
from support import PostgresServer

from pooler.net import stream
from pooler.net.stream import HandedOver, SocketServer, SocketTransport, listening_sockets, open_connection
from pooler.runtime.process import Pooler


class Recorder(asyncio.Protocol):
    """Records every call the transport makes, in order."""

    def __init__(self, *, keep_open_on_eof: bool = False) -> None:
        self.calls: list[str] = []
        self.data = bytearray()
        self.transport: SocketTransport | None = None
        self.lost: asyncio.Future[Exception | None] = asyncio.get_running_loop().create_future()
        self.got_data = asyncio.Event()
        self.keep_open_on_eof = keep_open_on_eof

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.calls.append("made")
        self.transport = cast(SocketTransport, transport)

    def data_received(self, data: bytes) -> None:
        if not self.calls or self.calls[-1] != "data":
            self.calls.append("data")
        self.data += data
        self.got_data.set()

    def eof_received(self) -> bool:
        self.calls.append("eof")
        return self.keep_open_on_eof

    def pause_writing(self) -> None:
        self.calls.append("pause_writing")

    def resume_writing(self) -> None:
        self.calls.append("resume_writing")

    def connection_lost(self, exc: Exception | None) -> None:
        self.calls.append("lost")
        self.lost.set_result(exc)


async def connected_pair() -> tuple[SocketTransport, Recorder, socket.socket]:
    """A SocketTransport (client side, via open_connection) and the raw peer socket it talks to."""
    loop = asyncio.get_running_loop()
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    try:
        protocol = Recorder()
        accepting = loop.create_task(loop.sock_accept(listener))
        transport = await open_connection(loop, protocol, "127.0.0.1", listener.getsockname()[1])
        peer, _ = await accepting
    finally:
        listener.close()
    peer.setblocking(False)
    return transport, protocol, peer


async def read_until_eof(peer: socket.socket) -> bytes:
    loop = asyncio.get_running_loop()
    chunks = []
    while chunk := await loop.sock_recv(peer, 1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


async def test_bytes_flow_both_ways_and_the_protocol_hears_made_data_lost_in_order() -> None:
    loop = asyncio.get_running_loop()
    transport, protocol, peer = await connected_pair()
    try:
        transport.write(b"ping")
        assert await loop.sock_recv(peer, 100) == b"ping"
        await loop.sock_sendall(peer, b"pong")
        await asyncio.wait_for(protocol.got_data.wait(), 5)
        assert bytes(protocol.data) == b"pong"
        transport.close()
        assert transport.is_closing()
        assert "lost" not in protocol.calls  # connection_lost comes from a later loop turn, never from close()
        assert await asyncio.wait_for(protocol.lost, 5) is None
        assert protocol.calls == ["made", "data", "lost"]
        assert await read_until_eof(peer) == b""
    finally:
        peer.close()


async def test_a_peer_that_does_not_read_pauses_the_writer_and_close_still_delivers_every_byte() -> None:
    transport, protocol, peer = await connected_pair()
    try:
        transport.set_write_buffer_limits(high=64 * 1024, low=16 * 1024)
        payload = bytes(range(256)) * 4096 * 8  # 8 MiB: far more than the socket buffers hold
        for offset in range(0, len(payload), 65536):
            transport.write(payload[offset : offset + 65536])
        assert "pause_writing" in protocol.calls
        assert transport.get_write_buffer_size() > 0
        transport.close()  # with bytes still buffered: they go first, then the socket closes
        received = await asyncio.wait_for(read_until_eof(peer), 30)
        assert received == payload
        assert await asyncio.wait_for(protocol.lost, 5) is None
        assert protocol.calls.index("pause_writing") < protocol.calls.index("resume_writing")
        assert protocol.calls[-1] == "lost"
    finally:
        peer.close()


async def test_a_large_write_to_a_slow_reader_is_flushed_in_linear_time() -> None:
    """What a partial write leaves is sent from where it stopped, not copied again on every writable turn:
    a SQL-over-HTTP answer (http_max_response_size: 10 MiB of rows, more as JSON) written at once to a
    slow client otherwise costs the event loop a copy of the whole rest per turn (quadratic: 48 MiB through
    small socket buffers took over ten seconds instead of well under one)."""
    loop = asyncio.get_running_loop()
    transport, protocol, peer = await connected_pair()
    try:
        transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 32 * 1024)
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)
        payload = bytes(range(256)) * (48 * 4096)  # 48 MiB
        transport.write(payload)
        transport.close()

        async def drain() -> int:
            received = 0
            while chunk := await loop.sock_recv(peer, 1 << 16):
                assert chunk == payload[received : received + len(chunk)]
                received += len(chunk)
            return received

        assert await asyncio.wait_for(drain(), 8) == len(payload)
        assert await asyncio.wait_for(protocol.lost, 5) is None
    finally:
        peer.close()


async def test_abort_drops_what_is_buffered_and_reports_the_loss_once() -> None:
    transport, protocol, peer = await connected_pair()
    try:
        transport.write(b"x" * (16 * 1024 * 1024))
        assert transport.get_write_buffer_size() > 0
        transport.abort()
        transport.abort()
        transport.close()
        assert await asyncio.wait_for(protocol.lost, 5) is None
        assert transport.get_write_buffer_size() == 0
        await asyncio.sleep(0.05)
        assert protocol.calls.count("lost") == 1
        transport.write(b"after the end")  # dropped, as asyncio drops it: no exception
    finally:
        peer.close()


async def test_eof_from_the_peer_closes_unless_the_protocol_keeps_its_half_open() -> None:
    transport, protocol, peer = await connected_pair()
    try:
        peer.shutdown(socket.SHUT_WR)
        assert await asyncio.wait_for(protocol.lost, 5) is None
        assert protocol.calls == ["made", "eof", "lost"]
    finally:
        peer.close()
    transport, protocol, peer = await connected_pair()
    protocol.keep_open_on_eof = True
    loop = asyncio.get_running_loop()
    try:
        peer.shutdown(socket.SHUT_WR)
        for _ in range(100):
            if "eof" in protocol.calls:
                break
            await asyncio.sleep(0.01)
        assert protocol.calls == ["made", "eof"]
        assert not transport.is_reading()
        transport.write(b"still writing")  # the other half is open
        assert await loop.sock_recv(peer, 100) == b"still writing"
        transport.write_eof()
        assert await read_until_eof(peer) == b""
        transport.close()
        assert await asyncio.wait_for(protocol.lost, 5) is None
    finally:
        peer.close()


async def test_a_reset_by_the_peer_reaches_connection_lost_as_an_error() -> None:
    transport, protocol, peer = await connected_pair()
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    peer.close()  # an RST, not a FIN
    for _ in range(50):
        if protocol.lost.done():
            break
        transport.write(b"into a reset connection")
        await asyncio.sleep(0.01)
    exc = await asyncio.wait_for(protocol.lost, 5)
    assert isinstance(exc, ConnectionError | OSError)
    assert getattr(exc, "errno", None) in (errno.ECONNRESET, errno.EPIPE)
    assert protocol.calls[-1] == "lost" and protocol.calls.count("lost") == 1


class Failing(Recorder):
    """A protocol with a bug: the call named ``fails`` raises."""

    def __init__(self, fails: str) -> None:
        super().__init__()
        self.fails = fails

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.fails == "data":
            raise RuntimeError("a bug in data_received")

    def eof_received(self) -> bool:
        super().eof_received()
        if self.fails == "eof":
            raise RuntimeError("a bug in eof_received")
        return False


@pytest.mark.parametrize("fails", ["data", "eof"])
async def test_a_protocol_callback_that_raises_closes_its_connection_as_uvloop_does(fails: str) -> None:
    """As asyncio's and uvloop's transports do: the error goes to the loop's exception handler and to
    connection_lost, and the connection closes, rather than staying open half-dead (a client the pooler
    would never answer again, or that never leaves)."""
    loop = asyncio.get_running_loop()
    reported: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _, context: reported.append(context))
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    try:
        protocol = Failing(fails)
        accepting = loop.create_task(loop.sock_accept(listener))
        transport = await open_connection(loop, protocol, "127.0.0.1", listener.getsockname()[1])
        peer, _ = await accepting
        peer.setblocking(False)
        with peer:
            await loop.sock_sendall(peer, b"bytes")
            if fails == "eof":
                peer.shutdown(socket.SHUT_WR)
            exc = await asyncio.wait_for(protocol.lost, 5)
            assert isinstance(exc, RuntimeError) and str(exc) == f"a bug in {fails}_received"
            assert await asyncio.wait_for(read_until_eof(peer), 5) == b""
            assert transport.is_closing()
            assert [context["exception"] for context in reported] == [exc]
    finally:
        listener.close()
        loop.set_exception_handler(previous)


class FailingFlowControl(Recorder):
    def pause_writing(self) -> None:
        super().pause_writing()
        raise RuntimeError("a bug in pause_writing")

    def resume_writing(self) -> None:
        super().resume_writing()
        raise RuntimeError("a bug in resume_writing")


async def test_flow_control_callbacks_that_raise_are_reported_and_the_close_still_completes() -> None:
    """As asyncio's transports do: pause_writing / resume_writing errors go to the exception handler; the
    write that crossed the mark, and the flush of a close, go on (else the socket would never close)."""
    loop = asyncio.get_running_loop()
    reported: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _, context: reported.append(context))
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    try:
        protocol = FailingFlowControl()
        accepting = loop.create_task(loop.sock_accept(listener))
        transport = await open_connection(loop, protocol, "127.0.0.1", listener.getsockname()[1])
        peer, _ = await accepting
        peer.setblocking(False)
        with peer:
            transport.set_write_buffer_limits(high=64 * 1024, low=16 * 1024)
            payload = b"x" * (8 * 1024 * 1024)
            transport.write(payload)  # far past the mark: pause_writing raises, the write is kept
            transport.close()
            assert await asyncio.wait_for(read_until_eof(peer), 30) == payload
            assert await asyncio.wait_for(protocol.lost, 5) is None
            assert [str(context["exception"]) for context in reported] == [
                "a bug in pause_writing", "a bug in resume_writing"]
    finally:
        listener.close()
        loop.set_exception_handler(previous)


async def test_pause_reading_holds_the_bytes_until_resume() -> None:
    loop = asyncio.get_running_loop()
    transport, protocol, peer = await connected_pair()
    try:
        transport.pause_reading()
        assert not transport.is_reading()
        await loop.sock_sendall(peer, b"held by the kernel")
        await asyncio.sleep(0.05)
        assert protocol.data == b""
        transport.resume_reading()
        await asyncio.wait_for(protocol.got_data.wait(), 5)
        assert bytes(protocol.data) == b"held by the kernel"
        transport.close()
        await asyncio.wait_for(protocol.lost, 5)
    finally:
        peer.close()


async def test_extra_info_names_the_socket_and_both_ends() -> None:
    transport, protocol, peer = await connected_pair()
    try:
        assert transport.get_extra_info("peername") == peer.getsockname()
        assert transport.get_extra_info("sockname") == peer.getpeername()
        assert transport.get_extra_info("socket").fileno() >= 0
        assert transport.get_extra_info("ssl_object") is None
        assert transport.get_extra_info("nothing", "default") == "default"
        transport.close()
        await asyncio.wait_for(protocol.lost, 5)
        assert transport.get_extra_info("peername") is None  # gone with the socket
    finally:
        peer.close()


async def test_a_server_accepts_connections_and_its_close_frees_the_port_but_keeps_them() -> None:
    loop = asyncio.get_running_loop()
    [sock] = listening_sockets("127.0.0.1", 0, backlog=16, reuse_port=False)
    port = sock.getsockname()[1]
    accepted: list[Recorder] = []

    def factory() -> asyncio.BaseProtocol:
        protocol = Recorder()
        accepted.append(protocol)
        return protocol

    server = SocketServer(loop, sock, factory)
    assert server.sockets == (sock,)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"hello")
        for _ in range(100):
            if accepted and accepted[0].data:
                break
            await asyncio.sleep(0.01)
        assert bytes(accepted[0].data) == b"hello"
        server.close()
        await server.wait_closed()
        assert server.sockets == ()
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", port)
        transport = accepted[0].transport
        assert transport is not None
        transport.write(b"still here")  # the accepted connection outlives its listener
        assert await reader.readexactly(10) == b"still here"
    finally:
        writer.close()


async def test_a_server_out_of_file_descriptors_pauses_accepting_instead_of_spinning(
        monkeypatch: pytest.MonkeyPatch) -> None:
    loop = asyncio.get_running_loop()
    monkeypatch.setattr(stream, "ACCEPT_RETRY_DELAY", 0.05)
    [sock] = listening_sockets("127.0.0.1", 0, backlog=16, reuse_port=False)
    accepted: list[Recorder] = []
    server = SocketServer(loop, sock, lambda: accepted.append(Recorder()) or accepted[-1])
    real_accept = sock.accept
    failures = 0

    class OutOfDescriptors:
        def fileno(self) -> int:
            return sock.fileno()

        def accept(self) -> Any:
            nonlocal failures
            if failures < 3:
                failures += 1
                raise OSError(errno.EMFILE, "Too many open files")
            return real_accept()

        def close(self) -> None:
            sock.close()

    server._sock = OutOfDescriptors()  # type: ignore[assignment]
    client = socket.create_connection(sock.getsockname())
    try:
        for _ in range(100):
            if accepted:
                break
            await asyncio.sleep(0.02)
        assert accepted, "the connection was accepted once descriptors were back"
        assert failures == 3  # one failure per retry delay, not a busy loop
    finally:
        client.close()
        server.close()


async def test_a_socket_the_loop_cannot_watch_is_lost_to_its_protocol_not_leaked() -> None:
    """The protocol was told connection_made: if the loop then refuses the socket, it must hear
    connection_lost (a client would otherwise count against max_client_conn forever)."""
    loop = asyncio.get_running_loop()

    class RefusingLoop:
        """The running loop, except that it refuses to watch a socket."""

        def add_reader(self, fd: int, callback: Any) -> None:
            raise OSError(errno.EBADF, "the loop refuses this descriptor")

        def __getattr__(self, name: str) -> Any:
            return getattr(loop, name)

    left, right = socket.socketpair()
    protocol = Recorder()
    try:
        transport = SocketTransport(cast(asyncio.AbstractEventLoop, RefusingLoop()), left, protocol)
        exc = await asyncio.wait_for(protocol.lost, 5)
        assert isinstance(exc, OSError) and exc.errno == errno.EBADF
        assert protocol.calls == ["made", "lost"]
        assert transport.is_closing()
        assert left.fileno() == -1  # the socket is closed, not left to the garbage collector
    finally:
        left.close()
        right.close()


async def test_a_protocol_that_fails_to_set_up_loses_its_connection_not_the_listener() -> None:
    loop = asyncio.get_running_loop()
    [sock] = listening_sockets("127.0.0.1", 0, backlog=16, reuse_port=False)
    made: list[Recorder] = []

    def factory() -> asyncio.BaseProtocol:
        if not made:
            made.append(Recorder())
            raise RuntimeError("a bug in the first connection's setup")
        made.append(Recorder())
        return made[-1]

    server = SocketServer(loop, sock, factory)
    try:
        first_reader, first_writer = await asyncio.open_connection(*sock.getsockname())
        assert await asyncio.wait_for(first_reader.read(), 5) == b""  # closed, without a word
        first_writer.close()
        _, second_writer = await asyncio.open_connection(*sock.getsockname())
        second_writer.write(b"still accepting")
        for _ in range(100):
            if len(made) == 2 and made[1].data:
                break
            await asyncio.sleep(0.01)
        assert bytes(made[1].data) == b"still accepting"
        second_writer.close()
    finally:
        server.close()


async def test_listening_on_two_addresses_with_port_0_gives_both_the_same_port() -> None:
    hosts = ["127.0.0.1", "::1"] if socket.has_ipv6 else ["127.0.0.1", "localhost"]
    try:
        sockets = listening_sockets(hosts, 0, backlog=16, reuse_port=False)
    except OSError as exc:  # no IPv6 loopback on this machine
        pytest.skip(f"no second loopback address: {exc}")
    try:
        assert len({s.getsockname()[1] for s in sockets}) == 1
    finally:
        for s in sockets:
            s.close()


def test_an_address_family_the_kernel_lacks_is_skipped_as_uvloop_skips_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """listen_addr = * on a kernel without IPv6 (ipv6.disable=1: socket(AF_INET6) fails with EAFNOSUPPORT)
    listens on IPv4, as loop.create_server did; only when no address can be listened on is it an error."""
    real_socket = socket.socket

    def no_ipv6(family: int = -1, kind: int = -1, proto: int = -1, fileno: int | None = None) -> socket.socket:
        if family == socket.AF_INET6:
            raise OSError(errno.EAFNOSUPPORT, "Address family not supported by protocol")
        return real_socket(family, kind, proto, fileno)

    monkeypatch.setattr(socket, "socket", no_ipv6)
    sockets = listening_sockets(["127.0.0.1", "::1"], 0, backlog=16, reuse_port=False)
    try:
        assert [s.family for s in sockets] == [socket.AF_INET]
    finally:
        for s in sockets:
            s.close()
    with pytest.raises(OSError) as raised:
        listening_sockets("::1", 0, backlog=16, reuse_port=False)
    assert raised.value.errno == errno.EAFNOSUPPORT


async def test_a_port_in_use_is_an_error_that_names_the_address() -> None:
    [taken] = listening_sockets("127.0.0.1", 0, backlog=16, reuse_port=False)
    try:
        with pytest.raises(OSError, match=r"error while attempting to bind on address.*address already in use"):
            listening_sockets("127.0.0.1", taken.getsockname()[1], backlog=16, reuse_port=False)
    finally:
        taken.close()


async def test_connecting_where_nobody_listens_raises_the_os_error() -> None:
    loop = asyncio.get_running_loop()
    [sock] = listening_sockets("127.0.0.1", 0, backlog=1, reuse_port=False)
    port = sock.getsockname()[1]
    sock.close()
    with pytest.raises(ConnectionRefusedError):
        await open_connection(loop, Recorder(), "127.0.0.1", port)


async def test_a_unix_socket_connection_runs_on_the_same_transport(tmp_path: Any) -> None:
    loop = asyncio.get_running_loop()
    path = str(tmp_path / "s")
    got: asyncio.Future[bytes] = loop.create_future()

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        got.set_result(await reader.readexactly(3))
        writer.write(b"ack")
        await writer.drain()
        writer.close()

    server = await asyncio.start_unix_server(echo, path)
    try:
        protocol = Recorder()
        transport = await open_connection(loop, protocol, None, 0, path)
        assert transport.get_extra_info("socket").family == socket.AF_UNIX
        transport.write(b"abc")
        assert await asyncio.wait_for(got, 5) == b"abc"
        assert await asyncio.wait_for(protocol.lost, 5) is None  # the echo server closed after its answer
        assert bytes(protocol.data) == b"ack"
        assert protocol.calls == ["made", "data", "eof", "lost"]
    finally:
        server.close()


async def test_a_unix_socket_whose_backlog_is_full_is_a_connect_error_not_a_connection(tmp_path: Any) -> None:
    """A busy Postgres's Unix socket refuses with EAGAIN; uvloop's create_unix_connection raised it, so the
    pooler reports a failed connect (and retries as server_login_retry says). Waiting for writability
    instead gives a socket that never connected: a connection_made, then ENOTCONN on the first write."""
    loop = asyncio.get_running_loop()
    path = str(tmp_path / "s")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(0)
    queued: list[socket.socket] = []
    try:
        while True:  # fill the backlog: nobody accepts
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.setblocking(False)
            queued.append(sock)
            try:
                sock.connect(path)
            except BlockingIOError:
                break
        protocol = Recorder()
        with pytest.raises(OSError) as raised:
            await asyncio.wait_for(open_connection(loop, protocol, None, 0, path), 5)
        assert raised.value.errno == errno.EAGAIN
        assert protocol.calls == []
    finally:
        for sock in queued:
            sock.close()
        listener.close()


async def test_hand_over_moves_the_socket_to_an_event_loop_transport_keeping_every_byte() -> None:
    loop = asyncio.get_running_loop()
    transport, protocol, peer = await connected_pair()
    try:
        transport.write(b"S")
        moved = await transport.hand_over()
        assert moved is not transport and not isinstance(moved, SocketTransport)
        assert isinstance(moved.get_protocol(), HandedOver)
        assert await loop.sock_recv(peer, 10) == b"S"
        await loop.sock_sendall(peer, b"client hello")
        await asyncio.sleep(0.05)
        # The placeholder keeps its transport from reading: the bytes wait for TLS in the kernel or in it.
        held = cast(HandedOver, moved.get_protocol()).take()
        receiver = Recorder()
        moved.set_protocol(receiver)
        moved.resume_reading()
        await asyncio.sleep(0.05)
        assert held + bytes(receiver.data) == b"client hello"
        assert "lost" not in protocol.calls  # the old transport's protocol is not told anything
        moved.close()
    finally:
        peer.close()


async def test_closing_a_handed_over_transport_closes_the_socket_where_it_moved() -> None:
    """A connection mid-TLS-handshake still holds the transport it started on: when client_login_timeout,
    a KILL or a shutdown closes it, that must close the socket, during the hand-over or after it."""
    transport, _, peer = await connected_pair()
    try:
        moved = await transport.hand_over()
        assert transport.get_extra_info("peername") == peer.getsockname()  # SHOW CLIENTS mid-handshake
        transport.close()
        assert moved.is_closing()
        assert await asyncio.wait_for(read_until_eof(peer), 5) == b""
    finally:
        peer.close()
    transport, _, peer = await connected_pair()
    try:
        transport.write(b"S")
        moving = asyncio.ensure_future(transport.hand_over())
        await asyncio.sleep(0)  # the hand-over now waits for the event loop's transport
        assert not moving.done()
        transport.abort()
        moved = await moving
        assert moved.is_closing()
        assert await asyncio.wait_for(read_until_eof(peer), 5) == b"S"
    finally:
        peer.close()


def test_plaintext_clients_and_servers_of_a_live_pooler_run_on_the_socket_transport(postgres: PostgresServer) -> None:
    """The pooled port's plaintext clients and the servers Postgres answered "N" (no TLS) are this module's;
    a TLS session would be on the event loop's own transport (tests/net/test_tls.py)."""
    with running_pooler(make_config(postgres)) as p, psycopg.connect(p.dsn()) as conn:
        assert conn.execute("select 1").fetchone() == (1,)

        def kinds(pl: Pooler) -> tuple[set[str], set[str]]:
            clients = {type(c.transport).__name__ for c in pl.clients}
            servers = {type(s.transport).__name__ for pool in pl.pools.values() for s in pool.servers}
            return clients, servers

        assert p.call(kinds) == ({"SocketTransport"}, {"SocketTransport"})


async def test_a_close_with_unread_bytes_lets_the_peer_read_our_last_words_instead_of_a_reset() -> None:
    """A pooler-side close (a FATAL, then close) can race the client's next query. Closing a socket with
    bytes still unread makes the kernel answer with a reset, and a client whose next send fails on it
    (libpq via psycopg: "flushing failed") never reads the FATAL. The transport half-closes and drains
    instead, so the peer's send succeeds and it reads our last bytes, then EOF."""
    loop = asyncio.get_running_loop()
    transport, protocol, peer = await connected_pair()
    try:
        transport.pause_reading()
        await loop.sock_sendall(peer, b"a query the pooler will not read")
        await asyncio.sleep(0.05)
        transport.write(b"FATAL: transaction timeout")
        transport.close()
        assert await asyncio.wait_for(protocol.lost, 5) is None
        await asyncio.sleep(0.05)
        await loop.sock_sendall(peer, b"the next query, sent before the client has read anything")
        assert await asyncio.wait_for(read_until_eof(peer), 5) == b"FATAL: transaction timeout"
    finally:
        peer.close()
