"""Cancel requests reach the query they were meant for, and no other (issue 10, item 1).

Postgres acts on a CancelRequest asynchronously, on a connection of its own. If the pooler handed the
server to the next client before that connection closed, the cancel could land on the next client's
query. A proxy that delays new connections to Postgres makes that window as wide as the test needs.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest
from harness import make_config, running_pooler
from psycopg import errors as pg_errors
from rawclient import RawClient
from support import APP_DB, APP_PASSWORD, APP_USER, PostgresServer

from pooler.config import DatabaseConfig
from pooler.wire import messages as pq

pytestmark = pytest.mark.usefixtures("no_leftover_backends")


class SlowToConnectProxy:
    """A TCP proxy to Postgres that, once ``slow`` is set, waits ``delay`` seconds before it opens each new
    upstream connection (a cancel's, since the pool's one server is already connected)."""

    def __init__(self, upstream: tuple[str, int], delay: float) -> None:
        self.upstream = upstream
        self.delay = delay
        self.slow = False
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = [self.listener]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self.sockets.append(client)
            threading.Thread(target=self._serve, args=(client, self.slow), daemon=True).start()

    def _serve(self, client: socket.socket, slow: bool) -> None:
        if slow:
            time.sleep(self.delay)
        upstream = socket.create_connection(self.upstream)
        self.sockets.append(upstream)
        threading.Thread(target=self._pipe, args=(upstream, client), daemon=True).start()
        self._pipe(client, upstream)

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        for sock in self.sockets:
            with contextlib.suppress(OSError):
                sock.close()


@contextlib.contextmanager
def slow_proxy(postgres: PostgresServer, delay: float) -> Iterator[SlowToConnectProxy]:
    proxy = SlowToConnectProxy((postgres.host, postgres.port), delay)
    try:
        yield proxy
    finally:
        proxy.close()


def test_a_late_cancel_never_reaches_the_next_clients_query(postgres: PostgresServer) -> None:
    """A's cancel reaches Postgres only after A's query is over; B, queued on the pool's one server, must not
    be the one cancelled (before: B got 57014 in 463 of 1,500 trials of the race this makes certain)."""
    with slow_proxy(postgres, delay=0.6) as proxy:
        databases = {APP_DB: DatabaseConfig(name=APP_DB, host="127.0.0.1", port=proxy.port)}
        with running_pooler(make_config(postgres, databases=databases, default_pool_size=1)) as p:
            with psycopg.connect(p.dsn(), autocommit=True) as warm:
                warm.execute("select 1")  # the pool's one server, connected before the proxy turns slow
            proxy.slow = True
            a = psycopg.connect(p.dsn(), autocommit=True)
            b = psycopg.connect(p.dsn(), autocommit=True)
            try:
                with ThreadPoolExecutor(2) as pool:
                    first = pool.submit(a.execute, "select pg_sleep(0.2)")
                    time.sleep(0.05)
                    second = pool.submit(lambda: b.execute("select pg_sleep(1.0), 'b'").fetchone())
                    time.sleep(0.05)
                    # cancel_safe, not cancel(): libpq's PQcancel holds the GIL while it waits, and this pooler runs
                    # on a thread of the test process. The cancel reaches Postgres ~0.6 s later, when B would be
                    # running on the same server.
                    a.cancel_safe(timeout=5)
                    with contextlib.suppress(pg_errors.QueryCanceled):
                        first.result(timeout=10)
                    assert second.result(timeout=10) == ("", "b")
            finally:
                a.close()
                b.close()


def backend_key(messages: list) -> tuple[int, int]:  # type: ignore[type-arg]
    key = next(m for m in messages if m.kind == "K")
    pid, secret = struct.unpack("!ii", key.payload)
    return pid, secret


def test_a_cancel_takes_a_queued_client_out_of_the_queue(postgres: PostgresServer, table: str) -> None:
    with running_pooler(make_config(postgres, default_pool_size=1)) as p:
        holder = psycopg.connect(p.dsn())  # not autocommit: its open transaction keeps the only server
        try:
            holder.execute("select 1")
            with RawClient(p.port) as queued:
                key = backend_key(queued.login(APP_USER, APP_PASSWORD, APP_DB))
                queued.send(pq.query(f"insert into {table} values (2, 2)"))
                time.sleep(0.2)
                assert p.pool_stat()["waiting"] == 1
                with socket.create_connection(("127.0.0.1", p.port)) as cancel:
                    cancel.sendall(pq.cancel_request(*key))
                answer = queued.read_until("Z")
                assert [m.kind for m in answer] == ["E", "Z"]
                assert (answer[0].fields["C"], answer[0].fields["M"]) == (
                    "57014", "canceling statement due to user request")
                assert p.pool_stat()["waiting"] == 0
                holder.commit()
                assert [m.kind for m in queued.simple_query(f"select count(*) from {table} where id = 2")][-1] == "Z"
                rows = [m for m in queued.simple_query(f"select count(*) from {table} where id = 2") if m.kind == "D"]
                assert rows[0].payload.endswith(b"0"), "the cancelled insert ran after all"
        finally:
            holder.close()
