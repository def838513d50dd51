"""``pooler.core.pool`` without sockets: the pool's decisions and state moves, driven by fakes.

The real-Postgres tests in test_pool.py check what a client can observe; these pin the pool's own rules
(one state per list, LIFO reuse, FIFO queue, capacity, cancels kept apart) fast and exactly.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from pooler.config import Config, DatabaseConfig, PoolMode, Settings
from pooler.core.ledger import Ledger
from pooler.core.parameters import TrackedParameters
from pooler.core.pool import Pool, ServerState
from pooler.wire import messages as pq


class FakeServer:
    def __init__(self, name: str) -> None:
        self.name = name
        self.state = ServerState.CONNECTING
        self.client: Any = None
        self.ledger = Ledger()
        self.direct = False
        self.stale = False
        self.created_at = 0.0
        self.last_used = 0.0
        self.params: dict[str, str] = {"TimeZone": "UTC"}
        self.reading_paused = False
        self.cancels_in_flight = 0
        self.internal: list[str] = []
        self.closed = ""
        self.pool: Pool[FakeServer, FakeClient] | None = None

    def close(self, reason: str) -> None:
        if self.state != ServerState.CLOSED:
            self.closed = reason
            assert self.pool is not None
            self.pool.server_closing(self)
            self.pool.server_closed(self)

    def run_internal(self, sql: str) -> None:
        self.internal.append(sql)
        self.ledger.internal_query_sent()

    def resume_reading(self) -> None:
        self.reading_paused = False

    def __repr__(self) -> str:
        return f"FakeServer({self.name})"


class FakeClient:
    def __init__(self) -> None:
        self.server: Any = None
        self.waiting = False
        self.wait_started = 0.0
        self.startup_params: dict[str, str] = {}
        self.welcomed: dict[str, str] | None = None
        self.failed: dict[str, str] | None = None

    def linked(self, server: FakeServer, now: float) -> None:
        raise AssertionError("the pool only pairs: the shell that asked starts the client's traffic")

    def welcome(self, server_params: dict[str, str]) -> None:
        self.welcomed = server_params

    def login_failed(self, fields: dict[str, str]) -> None:
        self.failed = fields

    def server_lost(self, server: FakeServer) -> None:
        self.server = None

    def fatal(self, sqlstate: str, message: str, *, hint: str | None = None, detail: str | None = None) -> None:
        self.failed = {"C": sqlstate, "M": message}


class FakeHost:
    def __init__(self, **settings: Any) -> None:
        self.config = Config(settings=dataclasses.replace(Settings(), server_check_query="", **settings),
                             databases={}, source="tests")
        self.now = 100.0
        self.clock = lambda: self.now
        self.parameters = TrackedParameters()
        self.opened: list[FakeServer] = []
        self.cancelled: list[FakeServer] = []

    def open_server(self, pool: Pool[Any, Any], params: dict[str, str], *, direct: bool) -> FakeServer:
        server = FakeServer(f"s{len(self.opened)}")
        server.pool = pool
        server.direct = direct
        self.opened.append(server)
        return server

    def may_open_server(self, pool: Pool[Any, Any]) -> bool:
        return True

    def server_gone(self, pool: Pool[Any, Any]) -> None:
        pass

    def room_wanted_by_other_pool(self, pool: Pool[Any, Any]) -> bool:
        return False

    def cancel_server(self, server: Any) -> None:
        self.cancelled.append(server)

    def pooler_error(self, client: Any, sqlstate: str, message: str) -> None:
        pass


def make_pool(**settings: Any) -> tuple[Pool[FakeServer, FakeClient], FakeHost]:
    host = FakeHost(**settings)
    return Pool(host, DatabaseConfig(name="db", host="127.0.0.1", port=5432), "app", ("pw", None)), host


def log_in(pool: Pool[FakeServer, FakeClient], server: FakeServer) -> FakeClient | None:
    """Log ``server`` in; returns the queued client it was handed to."""
    pool.server_connecting(server)
    return pool.server_logged_in(server)


def queue(pool: Pool[FakeServer, FakeClient]) -> FakeClient:
    client = FakeClient()
    client.waiting = True
    assert pool.request(client) is client.server  # a server given at once is the answer (None: queued)
    return client


def test_a_queued_client_opens_a_server_and_gets_it_once_it_logs_in() -> None:
    pool, host = make_pool(default_pool_size=2)
    client = queue(pool)
    assert [s.state for s in host.opened] == [ServerState.CONNECTING] and pool.connecting == 1
    assert log_in(pool, host.opened[0]) is client  # the answer: the shell starts the client on it
    assert client.server is host.opened[0] and host.opened[0].client is client
    assert host.opened[0].state == ServerState.ACTIVE


def test_a_full_pool_queues_in_arrival_order_and_a_released_server_goes_to_the_head() -> None:
    pool, host = make_pool(default_pool_size=1)
    first = queue(pool)
    log_in(pool, host.opened[0])
    second, third = queue(pool), queue(pool)
    assert len(host.opened) == 1 and list(pool.waiting) == [second, third]
    assert pool.server_ready(first, host.opened[0], host.now) is second
    assert first.server is None and second.server is host.opened[0] and list(pool.waiting) == [third]


def test_idle_servers_are_a_stack_and_each_state_is_one_list() -> None:
    pool, host = make_pool(default_pool_size=3)
    clients = [queue(pool) for _ in range(3)]
    for server in host.opened:
        log_in(pool, server)
    for client in clients:
        pool.server_ready(client, client.server, host.now)
    assert pool.idle == host.opened and all(s.state == ServerState.IDLE for s in pool.idle)
    taker = queue(pool)
    assert taker.server is host.opened[-1]  # the warmest one
    assert host.opened[-1] not in pool.idle and host.opened[-1].state == ServerState.ACTIVE
    assert pool.close_idle("test", 1) == 1 and host.opened[0].closed == "test"  # the coldest one
    assert pool.idle == [host.opened[1]]


def test_a_server_with_a_cancel_in_flight_is_kept_apart_until_it_lands() -> None:
    pool, host = make_pool(default_pool_size=1)
    first = queue(pool)
    server = host.opened[0]
    log_in(pool, server)
    pool.cancel_sent(server)
    second = queue(pool)
    assert pool.server_ready(first, server, host.now) is None
    assert server.state == ServerState.BEING_CANCELED and second.server is None
    assert pool.cancel_done(server) is second
    assert second.server is server and server.state == ServerState.ACTIVE


def test_a_client_that_leaves_mid_transaction_gets_its_server_rolled_back_then_released() -> None:
    pool, host = make_pool(default_pool_size=1)
    client = queue(pool)
    server = host.opened[0]
    log_in(pool, server)
    server.ledger.request_sent(pq.QUERY)
    server.ledger.ready_for_query(pq.TX_IN_BLOCK)
    pool.client_left_server(client, server, False, "client disconnected")
    assert server.internal == ["ROLLBACK"] and server.state == ServerState.BUSY
    server.ledger.ready_for_query(pq.TX_IDLE)
    assert pool.server_done_busy(server) is None  # nobody queued: parked
    assert server.state == ServerState.IDLE and pool.idle == [server]


def test_a_client_that_leaves_mid_query_gets_its_server_cancelled_and_closed() -> None:
    pool, host = make_pool(default_pool_size=1)
    client = queue(pool)
    server = host.opened[0]
    log_in(pool, server)
    server.ledger.request_sent(pq.QUERY)
    pool.client_left_server(client, server, False, "client disconnected")
    assert host.cancelled == [server] and server.state == ServerState.CLOSED and not pool.servers


def test_a_session_server_with_a_cancel_in_flight_is_closed_not_reset_and_reused() -> None:
    """Found in review: the cancel could land on the reset query (DISCARD ALL), and the server would go back
    to the pool with the old session's state."""
    pool, host = make_pool(default_pool_size=1, pool_mode=PoolMode.SESSION)
    client = queue(pool)
    server = host.opened[0]
    log_in(pool, server)
    server.ledger.request_sent(pq.QUERY)
    pool.cancel_sent(server)
    server.ledger.ready_for_query(pq.TX_IDLE)  # the query finished before the cancel landed
    pool.client_left_server(client, server, False, "client disconnected")
    assert server.internal == [] and server.state == ServerState.CLOSED and not pool.servers


@pytest.mark.parametrize("reserve", [False, True])
def test_the_reserve_raises_the_capacity_only_once_activated(reserve: bool) -> None:
    pool, host = make_pool(default_pool_size=1, reserve_pool_size=1, reserve_pool_timeout=5.0)
    queue(pool)
    log_in(pool, host.opened[0])
    queue(pool)
    assert pool.capacity == 1 and len(host.opened) == 1
    if reserve:
        pool.activate_reserve()
    assert pool.capacity == (2 if reserve else 1) and len(host.opened) == (2 if reserve else 1)
