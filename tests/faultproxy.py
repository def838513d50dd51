"""A fault-injecting TCP proxy for tests: put it between the pooler and Postgres and break the wire on purpose.

Why: the pooler's promises (no dirty reuse, no lost commit, a Postgres-shaped error instead of a hang) matter
most when the network misbehaves, which a healthy loopback never does. The proxy forwards bytes both ways
on its own event loop thread (like ``harness.RunningPooler``), and a test switches faults on and off:

* ``drop()`` — a black hole: bytes are read and thrown away, connections stay open (a dead peer);
* ``stall()`` / ``resume()`` — bytes are held, then delivered in order (a long pause, a slow network);
* ``reset()`` — every open connection is closed with a TCP RST (a crash, a firewall);
* ``refuse(True)`` — new connections are reset as soon as they are accepted (Postgres down);
* ``split = True`` — every chunk is delivered in random small pieces, with a yield between them, so each
  side sees messages cut at arbitrary byte boundaries (the scanners' framing);
* ``heal()`` — all of the above off.

``connections`` counts accepted connections, ``open`` the live ones.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import random
import socket
import struct
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

_CHUNK = 64 * 1024


class FaultProxy:
    """``FaultProxy(host, port)``; ``start()``; point the pooler at ``proxy.port``; ``stop()`` at the end."""

    def __init__(self, backend_host: str, backend_port: int, *, seed: int | None = None) -> None:
        self.backend = (backend_host, backend_port)
        self.port = 0
        self.split = False
        self.connections = 0
        self._rng = random.Random(seed)
        self._dropping = False
        self._refusing = False
        self._flowing: asyncio.Event | None = None
        self._links: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._server: asyncio.Server | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="faultproxy", daemon=True)

    # --- lifecycle ------------------------------------------------------------------------------

    def start(self) -> FaultProxy:
        self._thread.start()
        self._run(self._start())
        return self

    async def _start(self) -> None:
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def stop(self) -> None:
        self._run(self._stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _stop(self) -> None:
        assert self._server is not None and self._flowing is not None
        self._server.close()
        self._flowing.set()
        for link in list(self._links):
            for writer in link:
                writer.transport.abort()
        await self._server.wait_closed()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- faults ---------------------------------------------------------------------------------

    @property
    def open(self) -> int:
        return self._call(lambda: len(self._links))

    def drop(self) -> None:
        self._dropping = True

    def stall(self) -> None:
        self._call(lambda: self._flow(False))

    def resume(self) -> None:
        self._call(lambda: self._flow(True))

    def refuse(self, on: bool = True) -> None:
        self._refusing = on

    def reset(self) -> int:
        """RST every open connection (both sides); returns how many were open."""

        def rst() -> int:
            links = list(self._links)
            for link in links:
                for writer in link:
                    _abort_with_rst(writer)
            self._links.clear()
            return len(links)

        return self._call(rst)

    def heal(self) -> None:
        self._dropping = False
        self._refusing = False
        self.split = False
        self.resume()

    # --- forwarding -----------------------------------------------------------------------------

    def _flow(self, on: bool) -> None:
        assert self._flowing is not None
        if on:
            self._flowing.set()
        else:
            self._flowing.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        if self._refusing:
            _abort_with_rst(writer)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.backend)
        except OSError:
            _abort_with_rst(writer)
            return
        link = (writer, up_writer)
        self._links.add(link)
        try:
            await asyncio.gather(self._pump(reader, up_writer), self._pump(up_reader, writer))
        finally:
            self._links.discard(link)
            for w in link:
                w.close()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert self._flowing is not None
        try:
            while True:
                data = await reader.read(_CHUNK)
                if not data:
                    break
                await self._flowing.wait()
                if self._dropping:
                    continue
                if self.split and len(data) > 1:
                    pos = 0
                    while pos < len(data):
                        step = self._rng.randint(1, min(64, len(data) - pos))
                        writer.write(data[pos : pos + step])
                        await writer.drain()
                        await asyncio.sleep(0)
                        pos += step
                else:
                    writer.write(data)
                    await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()
        except (ConnectionError, OSError):
            pass

    # --- plumbing -------------------------------------------------------------------------------

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    def _call(self, fn: Callable[[], T]) -> T:
        future: concurrent.futures.Future[T] = concurrent.futures.Future()

        def invoke() -> None:
            try:
                future.set_result(fn())
            except BaseException as exc:
                future.set_exception(exc)

        self._loop.call_soon_threadsafe(invoke)
        return future.result(10)


def _abort_with_rst(writer: asyncio.StreamWriter) -> None:
    """Close so that the peer gets a TCP RST, not a FIN: SO_LINGER on, zero timeout."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
