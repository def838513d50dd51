"""A server handed from one client to the next through the shells, without sockets (fake transports).

The pool only pairs a freed server with the next queued client and returns it (tests/core/test_pool_core.py);
these check that the shells act on that answer within the same callback (no extra loop turn), after the
releasing client's own work: its answer delivered, its pipelined request queued again.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from pooler.config import Config, DatabaseConfig, Settings
from pooler.core.pool import Pool, ServerState
from pooler.core.session_state import SessionStateChecker
from pooler.net.client import ClientConnection
from pooler.net.login import ClientState
from pooler.net.server import ServerConnection
from pooler.runtime.process import Pooler
from pooler.wire import messages as pq
from pooler.wire.auth import ServerAuth

ANSWER = pq.build(b"C", b"SELECT 1\x00") + pq.ready_for_query(pq.TX_IDLE)


class Transport:
    """Records writes, in one log shared by every connection, so the order across connections is visible."""

    def __init__(self, name: str, log: list[tuple[str, bytes]]) -> None:
        self.name = name
        self.log = log

    def write(self, data: Any) -> None:
        self.log.append((self.name, bytes(data)))

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        pass


def one_server_pool(log: list[tuple[str, bytes]], clients: int) -> tuple[ServerConnection, list[ClientConnection]]:
    settings = dataclasses.replace(Settings(), default_pool_size=1, log_connections=False)
    db = DatabaseConfig(name="db", host="127.0.0.1", port=5432)
    pooler = Pooler(Config(settings=settings, databases={"db": db}))
    pool = Pool(pooler, db, "app", ("x", None))
    server = ServerConnection(pool, {}, ServerAuth("app", "x"))
    server.transport = Transport("server", log)  # type: ignore[assignment]
    server.state = ServerState.IDLE
    pool.servers.add(server)
    pool.idle.append(server)
    conns = []
    for i in range(clients):
        client = ClientConnection(pooler)
        client.transport = Transport(f"client{i}", log)  # type: ignore[assignment]
        client.state = ClientState.READY
        client.pool = pool
        conns.append(client)
    return server, conns


async def test_the_next_client_starts_in_the_same_callback_once_the_answer_is_delivered() -> None:
    log: list[tuple[str, bytes]] = []
    server, (first, second) = one_server_pool(log, 2)
    first.data_received(pq.query("select 1"))
    second.data_received(pq.query("select 2"))
    assert first.server is server and second.server is None and second.waiting
    log.clear()
    server.data_received(ANSWER)  # one callback: the first client's answer, then the second client's query
    assert log == [("client0", ANSWER), ("server", pq.query("select 2"))]
    assert first.server is None and second.server is server and not second.waiting
    assert list(server.ledger.pending) == [pq.QUERY] and server.state == ServerState.ACTIVE


async def test_the_releasing_client_requeues_its_pipelined_request_before_the_next_client_starts() -> None:
    """A client whose next request is held (a Query is checked for session state whole: its start waits for
    the rest) queues again behind the waiting client within the same callback; the waiting client gets the
    server, and the requeued client gets it at the next release."""
    log: list[tuple[str, bytes]] = []
    server, (first, second) = one_server_pool(log, 2)
    first.state_checker = SessionStateChecker()
    first.data_received(pq.query("select 1"))
    second.data_received(pq.query("select 2"))
    pending = pq.query("select 3")
    first.data_received(pending[:8])  # header and a little: held until the Query is whole
    log.clear()
    server.data_received(ANSWER)
    assert log == [("client0", ANSWER), ("server", pq.query("select 2"))]
    assert second.server is server and first.server is None
    assert first.waiting and list(server.pool.waiting) == [first]  # queued again, in the same callback
    first.data_received(pending[8:])
    server.data_received(ANSWER)
    assert first.server is server and log[-1] == ("server", pending)
