"""A bare uvloop byte forwarder: one Postgres connection per client, no pooling, no parsing.

Why it exists: it is the ceiling of the asyncio.Protocol-on-uvloop design. Whatever pooler's ratio
to PgBouncer is, the gap between pooler and this forwarder is what the pooling logic costs; the gap
between this forwarder and PgBouncer is the per-event cost of Python and uvloop themselves.

    python -m benchmarks.bare_forwarder LISTEN_PORT POSTGRES_PORT
"""

from __future__ import annotations

import asyncio
import sys

import uvloop


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
        _, upstream = await loop.create_connection(lambda: _Upstream(self), "127.0.0.1", self.postgres_port)
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
    server = await asyncio.get_running_loop().create_server(
        lambda: _Downstream(postgres_port), "127.0.0.1", listen_port)
    async with server:
        await server.serve_forever()


def main() -> int:
    uvloop.run(serve(int(sys.argv[1]), int(sys.argv[2])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
