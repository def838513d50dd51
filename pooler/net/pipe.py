"""An in-process transport: lets a pooled ``ClientConnection`` run over something other than a socket.

Why. An HTTP request and a WebSocket carry a Postgres session, and that session must be an ordinary
pooled client: queued FIFO with TCP clients, under the same timeouts and limits, in SHOW CLIENTS and the
metrics, authenticated like a login. Rather than re-implementing any of that, the HTTP and WebSocket
shells hand a ``ClientConnection`` this transport: what the client writes goes to the shell's
``on_write`` (wrapped in WebSocket frames, or decoded into JSON), and the shell feeds the client's input
with ``feed``. Everything else (peer address, flow control) is delegated to the real transport below, so
the same shells work unchanged on a TLS transport.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any


class PipeTransport(asyncio.Transport):
    """The transport of a client whose bytes travel inside another protocol on ``outer``.

    ``outer`` is typed as a Transport but used only through the methods every event loop's socket and
    TLS transports have (uvloop's are not subclasses of asyncio's, so no isinstance checks here).
    """

    def __init__(
        self,
        outer: asyncio.Transport,
        protocol: asyncio.Protocol,
        on_write: Callable[[bytes], None],
        on_close: Callable[[], None],
    ) -> None:
        super().__init__()
        self._outer = outer
        self._protocol = protocol
        self._on_write = on_write
        self._on_close = on_close
        self._closing = False
        self._lost = False
        self._paused = False

    # --- driving the protocol (the shell's side) -------------------------------------------------

    def start(self) -> None:
        self._protocol.connection_made(self)

    def feed(self, data: bytes) -> None:
        """Bytes from the far end for the protocol."""
        if not self._lost and data:
            self._protocol.data_received(data)

    def lose(self, exc: Exception | None = None) -> None:
        """The far end is gone: tell the protocol once."""
        self._closing = True
        if not self._lost:
            self._lost = True
            self._protocol.connection_lost(exc)

    # --- asyncio.Transport (the protocol's side) -------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self._closing and data:
            self._on_write(bytes(data))

    def close(self) -> None:
        """The protocol hangs up: the shell is told now, the protocol's connection_lost comes next tick."""
        if self._closing:
            return
        self._closing = True
        self._on_close()
        asyncio.get_running_loop().call_soon(self.lose, None)

    def abort(self) -> None:
        self.close()

    def is_closing(self) -> bool:
        return self._closing

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._outer.get_extra_info(name, default)

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        assert isinstance(protocol, asyncio.Protocol)
        self._protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol

    def pause_reading(self) -> None:
        if not self._paused and not self._outer.is_closing():
            self._paused = True
            self._outer.pause_reading()

    def resume_reading(self) -> None:
        if self._paused and not self._outer.is_closing():
            self._paused = False
            self._outer.resume_reading()

    def is_reading(self) -> bool:
        return not self._paused

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._outer.set_write_buffer_limits(high, low)

    def get_write_buffer_size(self) -> int:
        return self._outer.get_write_buffer_size()

    def can_write_eof(self) -> bool:
        return False
