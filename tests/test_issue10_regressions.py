"""Regressions for issue 10, items 1-3, each reproduced with raw frames on a pool of one server.

1. A cancel must never reach another client's query; a cancel for a queued client takes it out of the queue.
2. COPY FROM STDIN pipelined in one write (simple and extended protocol) must not pin its server.
3. A partial message must not hold its server beyond query_timeout.
"""

from __future__ import annotations

import random
import socket
import struct
import threading
import time
from collections.abc import Iterator

import psycopg
import pytest
from harness import RunningPooler, make_config, running_pooler
from rawclient import Message, RawClient, bind, execute, parse
from support import APP_DB, APP_PASSWORD, APP_USER, PostgresServer

from pooler.wire import messages as pq


@pytest.fixture(scope="module")
def pooler(postgres: PostgresServer) -> Iterator[RunningPooler]:
    with running_pooler(make_config(postgres, default_pool_size=1, query_wait_timeout=10)) as running:
        yield running


def login(pooler: RunningPooler) -> tuple[RawClient, tuple[int, int]]:
    client = RawClient(pooler.port, timeout=10)
    messages = client.login(APP_USER, APP_PASSWORD, APP_DB)
    key = next(m for m in messages if m.kind == "K")
    return client, struct.unpack("!ii", key.payload)


def send_cancel(pooler: RunningPooler, key: tuple[int, int]) -> None:
    with socket.create_connection(("127.0.0.1", pooler.port), timeout=5) as sock:
        sock.sendall(pq.cancel_request(*key))
        sock.recv(1)  # the pooler closes the cancel connection once it has acted


def sqlstates(messages: list[Message]) -> list[str]:
    return [m.fields.get("C", "") for m in messages if m.kind == "E"]


# --- item 1 -----------------------------------------------------------------------------------------------


def test_1_a_cancel_never_reaches_the_client_queued_behind(pooler: RunningPooler) -> None:
    """A runs a short sleep, B queues behind it, A cancels while its query may be finishing: the cancel
    must hit A's query or nothing, never B's, which got the same server (463 of 1,500 trials before)."""
    rng = random.Random(10)
    crossed = 0
    trials = 60
    a, a_key = login(pooler)
    b, _ = login(pooler)
    try:
        for _ in range(trials):
            a.send(pq.query("select pg_sleep(0.005)"))
            time.sleep(0.0005)
            b.send(pq.query("select pg_sleep(0.03)"))
            time.sleep(rng.uniform(0.002, 0.007))
            send_cancel(pooler, a_key)
            a.read_until("Z")
            if "57014" in sqlstates(b.read_until("Z")):
                crossed += 1
    finally:
        a.close()
        b.close()
    assert crossed == 0, f"{crossed} of {trials} cancels reached the other client's query"


def test_1_a_cancel_takes_a_queued_client_out_of_the_queue(pooler: RunningPooler) -> None:
    """B waits for the only server (A holds it in a transaction); B's cancel answers B with 57014 at once
    instead of running its query whenever A lets go."""
    a, _ = login(pooler)
    b, b_key = login(pooler)
    try:
        assert a.simple_query("begin")[-1].payload == b"T"
        b.send(pq.query("select 'ran anyway'"))
        time.sleep(0.1)
        started = time.monotonic()
        send_cancel(pooler, b_key)
        b.sock.settimeout(3)
        answer = b.read_until("Z")
        assert time.monotonic() - started < 2
        assert sqlstates(answer) == ["57014"], answer
        assert not any(m.kind == "D" for m in answer)
    finally:
        a.close()
        b.close()


# --- item 2 -----------------------------------------------------------------------------------------------


@pytest.fixture
def copy_table(postgres: PostgresServer) -> Iterator[str]:
    name = f"copy_{time.monotonic_ns()}"
    with psycopg.connect(postgres.dsn(APP_DB, APP_USER, APP_PASSWORD), autocommit=True) as conn:
        conn.execute(f"create table {name} (v int)")
    yield name
    with psycopg.connect(postgres.dsn(APP_DB, APP_USER, APP_PASSWORD), autocommit=True) as conn:
        conn.execute(f"drop table {name}")


def _next_client_gets_the_server(pooler: RunningPooler) -> None:
    """The only server must be free: another client's query is answered promptly."""
    other, _ = login(pooler)
    try:
        other.sock.settimeout(3)
        assert [m.kind for m in other.simple_query("select 1")] == ["T", "D", "C", "Z"]
    finally:
        other.close()


@pytest.mark.parametrize("protocol", ["simple", "extended"])
def test_2_pipelined_copy_does_not_pin_the_server(pooler: RunningPooler, copy_table: str, protocol: str) -> None:
    client, _ = login(pooler)
    try:
        sql = f"copy {copy_table} from stdin"
        rows = pq.build(b"d", b"1\n2\n") + pq.build(b"c")
        if protocol == "simple":
            client.send(pq.query(sql) + rows)  # one write: CopyDone before the server's CopyInResponse
        else:
            client.send(parse(sql) + bind([]) + execute() + pq.SYNC_MESSAGE + rows + pq.SYNC_MESSAGE)
        answer = client.read_until("Z")
        assert "C" in [m.kind for m in answer] and not sqlstates(answer), answer
        _next_client_gets_the_server(pooler)  # waited until the first client disconnected
    finally:
        client.close()


# --- item 3 -----------------------------------------------------------------------------------------------


def test_3_a_stalled_partial_query_does_not_hold_its_server_beyond_query_timeout(postgres: PostgresServer) -> None:
    config = make_config(postgres, default_pool_size=1, query_timeout=1, query_wait_timeout=10)
    with running_pooler(config) as pooler:
        client, _ = login(pooler)
        try:
            client.simple_query("begin")  # links the only server to this client
            whole = pq.query("select '" + "x" * 990 + "'")
            client.send(whole[:108])  # 108 of ~1,000 bytes, then nothing
            result: list[float] = []

            errors: list[BaseException] = []

            def other() -> None:
                started = time.monotonic()
                try:
                    with psycopg.connect(pooler.dsn(), autocommit=True) as conn:
                        conn.execute("select 1")
                except psycopg.Error as exc:
                    errors.append(exc)
                result.append(time.monotonic() - started)

            time.sleep(2.5)  # well past query_timeout (and the timeouts sweep): the server must be free by now
            thread = threading.Thread(target=other)
            thread.start()
            thread.join(8)
            assert result and result[0] < 0.9, "the stalled client kept the only server beyond query_timeout"
            assert not errors, errors
        finally:
            client.close()
