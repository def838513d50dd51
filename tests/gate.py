"""A TCP forwarder in front of the test Postgres that a test can shut and open: Postgres "restarting".

Why not restart the session's Postgres: every other test shares it, and a restart takes seconds. The
pooler sees what it would see in a restart: its backends' connections drop, new connections are
refused (the port is not listened on), and later accepted again on the same port.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator

from harness import free_port


class Gate:
    """Forwards 127.0.0.1:``port`` to Postgres while open; ``shut()`` refuses and drops, ``open()`` resumes."""

    def __init__(self, target_host: str, target_port: int, *, bind: str = "127.0.0.1", port: int = 0) -> None:
        self.target = (target_host, target_port)
        self.bind = bind
        self.port = port or free_port()
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="gate", daemon=True)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.accepted = 0  # connections forwarded so far

    def _run(self, coro: object) -> None:
        asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)  # type: ignore[arg-type]

    def start(self) -> None:
        self._thread.start()
        self.open()

    def open(self) -> None:
        """Listen again: new connections reach Postgres."""
        self._run(self._open())

    async def _open(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(self._pipe, self.bind, self.port, reuse_address=True)

    def shut(self, *, drop: bool = True) -> None:
        """Stop listening (connects are refused); with ``drop`` also cut every forwarded connection."""
        self._run(self._shut(drop))

    async def _shut(self, drop: bool) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        if drop:
            for writer in list(self._writers):
                writer.transport.abort()

    async def _pipe(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        try:
            server_reader, server_writer = await asyncio.open_connection(*self.target)
        except OSError:
            client_writer.transport.abort()
            return
        self._writers.update((client_writer, server_writer))

        async def copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.CancelledError):
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
            writer.transport.abort()

        await asyncio.gather(copy(client_reader, server_writer), copy(server_reader, client_writer))
        self._writers.difference_update((client_writer, server_writer))

    def stop(self) -> None:
        self.shut()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


@contextlib.contextmanager
def gate_to(host: str, port: int, *, bind: str = "127.0.0.1", listen_port: int = 0) -> Iterator[Gate]:
    gate = Gate(host, port, bind=bind, port=listen_port)
    gate.start()
    try:
        yield gate
    finally:
        gate.stop()
