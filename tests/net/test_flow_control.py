"""Flow control: a slow side stops the pooler reading the fast side, so memory stays bounded.

Both directions are tested with a real Postgres: a client that does not read a large result, and a
Postgres that does not read a large COPY (its table is locked by another session).
"""

from __future__ import annotations

import socket
import time

import psycopg
from harness import RunningPooler, make_config, running_pooler
from rawclient import RawClient
from support import APP_DB, APP_PASSWORD, APP_USER, PostgresServer

from pooler.net.server import WRITE_BUFFER_HIGH
from pooler.runtime.process import Pooler
from pooler.wire import messages as pq

#: What the pooler may hold for one connection beyond the high-water mark: one read from the other side.
SLACK = 512 * 1024


def buffered(pooler: RunningPooler) -> tuple[int, int]:
    """(bytes queued towards clients, bytes queued towards servers), read on the pooler's loop."""

    def read(p: Pooler) -> tuple[int, int]:
        to_clients = sum(c.transport.get_write_buffer_size() for c in p.clients if c.transport is not None)
        to_servers = sum(
            s.transport.get_write_buffer_size()
            for pool in p.pools.values()
            for s in pool.servers
            if s.transport is not None
        )
        return to_clients, to_servers

    return pooler.call(read)


def test_a_client_that_does_not_read_pauses_its_server(postgres: PostgresServer) -> None:
    with running_pooler(make_config(postgres)) as pooler, RawClient(pooler.port) as client:
        client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        client.login(APP_USER, APP_PASSWORD, APP_DB)
        row = 1000
        rows = 200_000  # ~200 MB of DataRows
        client.send(pq.query(f"select repeat('x', {row}) from generate_series(1, {rows})"))
        peak = 0
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:  # the client reads nothing for a while: Postgres keeps sending
            peak = max(peak, buffered(pooler)[0])
            time.sleep(0.05)
        assert peak > WRITE_BUFFER_HIGH // 2, "the test must actually fill the pooler's buffer"
        assert peak < WRITE_BUFFER_HIGH + SLACK, f"{peak} bytes buffered for one slow client"
        received = 0
        for message in client.read_until("Z"):
            if message.kind == "D":
                received += 1
        assert received == rows  # nothing was lost while paused


def test_a_postgres_that_does_not_read_pauses_its_client(postgres: PostgresServer) -> None:
    with running_pooler(make_config(postgres)) as pooler:
        with psycopg.connect(pooler.dsn(direct=True), autocommit=True) as setup:
            setup.execute("create table if not exists flow_sink (line text)")
            setup.execute("truncate flow_sink")
        locker = psycopg.connect(postgres.dsn(APP_DB))
        locker.execute("lock table flow_sink in access exclusive mode")
        try:
            with RawClient(pooler.port, timeout=30) as client:
                client.login(APP_USER, APP_PASSWORD, APP_DB)
                client.sock.setblocking(False)
                line = pq.build(b"d", b"y" * 8000 + b"\n")
                start = pq.query("copy flow_sink from stdin")
                pending = start
                sent = 0
                peak = 0
                deadline = time.monotonic() + 3
                while time.monotonic() < deadline:  # push COPY data at a Postgres that is blocked on the lock
                    if not pending:
                        pending = line * 64
                    try:
                        n = client.sock.send(pending)
                        sent += n
                        pending = pending[n:]
                    except BlockingIOError:
                        time.sleep(0.02)
                    peak = max(peak, buffered(pooler)[1])
                assert sent > 4 * WRITE_BUFFER_HIGH, "the test must push more than the pooler may hold"
                assert peak < WRITE_BUFFER_HIGH + SLACK, f"{peak} bytes buffered towards one blocked server"
                locker.rollback()  # release the lock: Postgres reads again, the pooler resumes the client
                client.sock.setblocking(True)
                client.send(pending + pq.build(b"c"))
                lines = (sent + len(pending) - len(start)) // len(line)
                messages = client.read_until("Z")
                assert [m.kind for m in messages][-2:] == ["C", "Z"], messages
        finally:
            locker.close()
        with psycopg.connect(pooler.dsn(direct=True)) as check:
            assert check.execute("select count(*) from flow_sink").fetchone() == (lines,)  # nothing lost


# -- partial messages (issue 10, item 3) -----------------------------------------------------------------


def held(pooler: RunningPooler) -> int:
    """The most bytes any client connection holds back (a message it waits to see whole)."""
    return pooler.call(lambda p: max((len(c._held) for c in p.clients), default=0))


def test_a_huge_query_streams_through_instead_of_being_held_whole(postgres: PostgresServer) -> None:
    """With session_state_check = warn, a Query was held until whole: 3 clients x 100 MB took the pooler from
    38 MB to 346 MB. A statement longer than CHECK_LIMIT now streams to Postgres as it arrives."""
    size = 16 * 1024 * 1024
    message = pq.query("select length('" + "x" * size + "')")
    with running_pooler(make_config(postgres, session_state_check="warn")) as pooler, RawClient(pooler.port) as client:
        client.login(APP_USER, APP_PASSWORD, APP_DB)
        half = len(message) // 2
        for start in range(0, half, 1 << 20):
            client.send(message[start : min(start + (1 << 20), half)])
        time.sleep(0.3)
        assert held(pooler) < SLACK, "half of a 16 MB Query was held by the pooler instead of streamed"
        client.send(message[half:])
        answer = client.read_until("Z")
        rows = [m for m in answer if m.kind == "D"]
        assert len(rows) == 1 and rows[0].payload.endswith(str(size).encode()), answer


def test_a_query_stalled_halfway_is_cut_by_query_timeout(postgres: PostgresServer) -> None:
    """A client that sent 108 of a 1,000-byte Query held its server beyond every timeout; now query_timeout
    applies to a message stalled halfway, and the server goes back to the pool for the next client."""
    message = pq.query("select '" + "y" * 980 + "'")
    config = make_config(postgres, default_pool_size=1, query_timeout=1.0, session_state_check="warn")
    with running_pooler(config) as pooler, RawClient(pooler.port) as stalled:
        stalled.login(APP_USER, APP_PASSWORD, APP_DB)
        stalled.simple_query("select 1")  # links and releases once: the pool has its one server
        stalled.send(message[:108])
        started = time.monotonic()
        fields = stalled.expect_fatal()
        assert (fields["C"], fields["M"]) == ("08P01", "query timeout")  # PgBouncer's words for a query in flight
        assert time.monotonic() - started < 5
        with psycopg.connect(pooler.dsn(), autocommit=True, connect_timeout=5) as other:
            assert other.execute("select 1").fetchone() == (1,)
