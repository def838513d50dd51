"""A TCP proxy for tests that records the SQL a real driver sends: what the driver does on its own.

Why a proxy and not a hook in the pooler: the point is to capture a driver's real traffic (its pool
reset, its health check, its connection setup) exactly as it leaves the driver, so the capture cannot
depend on what the pooler does with it. Bytes are forwarded unchanged both ways; the client's side is
parsed on the fly (startup packet, then typed messages) and every Query text and every Parse's query
text is recorded, in order, per connection.
"""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field

_SSL_REQUEST, _GSSENC_REQUEST = 80877103, 80877104


@dataclass
class Recording:
    """What the clients sent: ``("Q" | "P", sql)`` in arrival order (all connections interleaved)."""

    statements: list[tuple[str, str]] = field(default_factory=list)
    connections: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def sql(self) -> list[str]:
        with self.lock:
            return [text for _, text in self.statements]


class _ClientParser:
    """Splits the client's byte stream into messages and records Query and Parse texts."""

    def __init__(self, recording: Recording) -> None:
        self.recording = recording
        self.buf = bytearray()
        self.startup = True

    def feed(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        while True:
            if self.startup:
                if len(buf) < 8:
                    return
                length = struct.unpack_from("!i", buf, 0)[0]
                if len(buf) < length:
                    return
                code = struct.unpack_from("!i", buf, 4)[0]
                del buf[:length]
                # After an SSLRequest/GSSENCRequest (answered 'N' by the pooler) the startup packet follows.
                self.startup = code in (_SSL_REQUEST, _GSSENC_REQUEST)
                continue
            if len(buf) < 5:
                return
            kind = chr(buf[0])
            length = struct.unpack_from("!i", buf, 1)[0]
            if len(buf) < 1 + length:
                return
            body = bytes(buf[5 : 1 + length])
            del buf[: 1 + length]
            if kind == "Q":
                self._add("Q", body.rstrip(b"\x00").decode("utf-8", "replace"))
            elif kind == "P":
                _name, _, rest = body.partition(b"\x00")
                query, _, _ = rest.partition(b"\x00")
                self._add("P", query.decode("utf-8", "replace"))

    def _add(self, kind: str, sql: str) -> None:
        with self.recording.lock:
            self.recording.statements.append((kind, sql))


def _pump(src: socket.socket, dst: socket.socket, parser: _ClientParser | None) -> None:
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            if parser is not None:
                parser.feed(data)
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for sock in (src, dst):
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


@contextmanager
def recording_proxy(target_port: int, target_host: str = "127.0.0.1") -> Iterator[tuple[int, Recording]]:
    """Listen on a free loopback port, forward each connection to the target, yield (port, recording)."""
    recording = Recording()
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    port = listener.getsockname()[1]
    sockets: list[socket.socket] = []
    threads: list[threading.Thread] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection((target_host, target_port))
            except OSError:
                client.close()
                continue
            with recording.lock:
                recording.connections += 1
            sockets.extend((client, server))
            for args in ((client, server, _ClientParser(recording)), (server, client, None)):
                thread = threading.Thread(target=_pump, args=args, daemon=True)
                thread.start()
                threads.append(thread)

    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    try:
        yield port, recording
    finally:
        stop.set()
        with suppress(OSError):
            listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept() on Linux
        listener.close()
        for sock in sockets:
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        for thread in threads:
            thread.join(5)
        for sock in sockets:
            sock.close()
        acceptor.join(5)
