"""A bare byte forwarder on uvloop: one Postgres connection per client, no pooling, no parsing.

Why it exists: it is the ceiling of pooler's design. Whatever pooler's ratio to PgBouncer is, the gap
between pooler and this forwarder is what the pooling logic costs; the gap between this forwarder and
PgBouncer is the per-event cost of Python and the event loop themselves. By default its sockets run on
the transport pooler's plaintext connections use (pooler.net.stream); ``--transport uvloop`` puts them
on uvloop's own stream transport instead, which is what that module replaced.

    python -m benchmarks.bare_forwarder LISTEN_PORT POSTGRES_PORT [--transport stream|uvloop]
"""

from __future__ import annotations

import argparse
import asyncio
import sys

import uvloop

from pooler.net.stream import SocketServer, listening_sockets, open_connection

#: Which transport the sockets run on: "stream" (pooler.net.stream) or "uvloop" (set by main).
TRANSPORT = "stream"


class _Upstream(asyncio.Protocol):
    def __init__(self, downstream: _Downstream) -> None:
        self.downstream = downstream
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.downstream.transport is not None:
            self.downstream.transport.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.downstream.transport is not None:
            self.downstream.transport.close()


class _Downstream(asyncio.Protocol):
    def __init__(self, postgres_port: int) -> None:
        self.postgres_port = postgres_port
        self.transport: asyncio.Transport | None = None
        self.upstream: _Upstream | None = None
        self.early: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        upstream = _Upstream(self)
        if TRANSPORT == "stream":
            await open_connection(loop, upstream, "127.0.0.1", self.postgres_port)
        else:
            await loop.create_connection(lambda: upstream, "127.0.0.1", self.postgres_port)
        self.upstream = upstream
        for data in self.early:
            assert upstream.transport is not None
            upstream.transport.write(data)
        self.early.clear()

    def data_received(self, data: bytes) -> None:
        upstream = self.upstream
        if upstream is None or upstream.transport is None:
            self.early.append(data)
        else:
            upstream.transport.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.close()


async def serve(listen_port: int, postgres_port: int) -> None:
    loop = asyncio.get_running_loop()
    if TRANSPORT == "stream":
        [sock] = listening_sockets("127.0.0.1", listen_port, backlog=1024, reuse_port=False)
        SocketServer(loop, sock, lambda: _Downstream(postgres_port))
        await asyncio.Event().wait()
        return
    server = await loop.create_server(lambda: _Downstream(postgres_port), "127.0.0.1", listen_port)
    async with server:
        await server.serve_forever()


def main() -> int:
    global TRANSPORT
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("listen_port", type=int)
    parser.add_argument("postgres_port", type=int)
    parser.add_argument("--transport", choices=["stream", "uvloop"], default="stream")
    args = parser.parse_args()
    TRANSPORT = args.transport
    uvloop.run(serve(args.listen_port, args.postgres_port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
