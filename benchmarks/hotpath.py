"""The pooling logic alone, without sockets: µs of Python per transaction on the data path.

Why: under pgbench most of a pooler's CPU is the kernel's (send/recv/epoll), which hides the Python
cost and makes it noisy to measure. This drives the real ClientConnection / ServerConnection / Pool
objects through fake transports: 50 clients, 20 servers, pgbench -S traffic (one Query, a
RowDescription/DataRow/CommandComplete/ReadyForQuery answer), so every release hands the server
to a queued client as it does under load. Profile it with ``python -m cProfile -m benchmarks.hotpath``.

    python -m benchmarks.hotpath [transactions]
"""

from __future__ import annotations

import asyncio
import dataclasses
import sys
import time
from typing import Any

from pooler.config import Config, DatabaseConfig, Settings
from pooler.core.pool import Pool, ServerState
from pooler.net.client import ClientConnection, servers_of
from pooler.net.login import ClientState
from pooler.net.server import ServerConnection
from pooler.runtime.process import Pooler
from pooler.wire import messages as pq
from pooler.wire.auth import ServerAuth

QUERY = pq.query("SELECT abalance FROM pgbench_accounts WHERE aid = 4242;")
ANSWER = (
    pq.build(b"T", b"\x00\x01abalance\x00" + b"\x00" * 18)
    + pq.build(b"D", b"\x00\x01\x00\x00\x00\x010")
    + pq.build(b"C", b"SELECT 1\x00")
    + pq.ready_for_query(pq.TX_IDLE)
)


class NullTransport:
    def write(self, data: Any) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        pass


async def run(transactions: int, clients: int = 50, servers: int = 20) -> float:
    settings = dataclasses.replace(Settings(), default_pool_size=servers, log_connections=False)
    db = DatabaseConfig(name="bench", host="127.0.0.1", port=5432)
    pooler = Pooler(Config(settings=settings, databases={"bench": db}))
    pooler.clock = asyncio.get_running_loop().time
    pool = Pool(pooler, db, "bench", ("x", None))
    pooler.pools[("bench", "bench")] = pool
    params = {"client_encoding": "UTF8", "DateStyle": "ISO, MDY", "TimeZone": "UTC", "application_name": "pgbench",
              "standard_conforming_strings": "on", "IntervalStyle": "postgres"}
    for _ in range(servers):
        server = ServerConnection(pool, {}, ServerAuth("bench", "x"))
        server.transport = NullTransport()  # type: ignore[assignment]
        server.params = dict(params)
        server.params_key = pooler.parameters.key(server.params)
        server.state = ServerState.IDLE
        pool.servers.add(server)
        pool.idle.append(server)
    conns = []
    for _ in range(clients):
        client = ClientConnection(pooler)
        client.transport = NullTransport()  # type: ignore[assignment]
        client.state = ClientState.READY
        client.pool = pool
        client.params = dict(params)
        client.params_key = pooler.parameters.key(client.params)
        conns.append(client)
    done = 0
    # CPU time of this thread, not wall time: on a shared machine other processes' load barely moves it.
    start = time.thread_time()
    while done < transactions:
        for client in conns:  # every client sends its next query: 20 get a server, 30 queue
            if client.server is None and not client.waiting:
                client.data_received(QUERY)
        for server in servers_of(pool, direct=False):  # every busy server answers; the release feeds a queued client
            if server.client is not None and server.ledger.pending:
                server.data_received(ANSWER)
                done += 1
    return (time.thread_time() - start) / done * 1e6


def main() -> int:
    transactions = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
    import uvloop

    per_tx = uvloop.run(run(transactions))
    from pooler._compiled import compiled_modules

    core = "compiled core" if compiled_modules() else "pure Python"
    print(f"{per_tx:.2f} us of Python per transaction (pooling logic only, no syscalls; CPU time; {core})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
