"""Unit tests of the two header scanners on the data path, through fake transports (no sockets).

The scanners must give the same answer however TCP chops the stream, so every test feeds the same
bytes in every possible two-way split and in one-byte pieces.
"""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

import pytest

from pooler.config import Config, PoolMode
from pooler.core.parameters import TrackedParameters
from pooler.core.pool import ServerState
from pooler.core.stats import PoolStats
from pooler.net.client import ClientConnection
from pooler.net.login import ClientState
from pooler.net.server import ServerConnection
from pooler.wire import messages as pq
from pooler.wire.auth import ServerAuth


class FakeTransport:
    def __init__(self) -> None:
        self.written = bytearray()
        self.paused = False

    def write(self, data: bytes) -> None:
        self.written += data

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def close(self) -> None:
        pass


class FakeClient:
    def __init__(self) -> None:
        self.received = bytearray()
        self.params: dict[str, str] = {"TimeZone": "UTC"}
        self.params_key: tuple[str | None, ...] = ("UTC",)
        self.ready_calls = 0
        self.direct = False
        self.transport = self  # the scanner writes to the client's transport: record it here

    def write(self, data: bytes) -> None:
        self.received += data

    def server_ready_for_query(self, server: ServerConnection) -> None:
        self.ready_calls += 1


def make_server() -> tuple[ServerConnection, FakeClient]:
    parameters = TrackedParameters()
    parameters.names, parameters.names_set = ("TimeZone",), frozenset({"TimeZone"})  # track TimeZone alone
    host = SimpleNamespace(clock=time.monotonic, parameters=parameters)
    pool: Any = SimpleNamespace(host=host, stats=PoolStats(), mode=PoolMode.TRANSACTION)
    server = ServerConnection(pool, {}, ServerAuth("u", "p"))
    server.transport = FakeTransport()  # type: ignore[assignment]
    server.state = ServerState.ACTIVE
    client = FakeClient()
    server.client = client  # type: ignore[assignment]
    return server, client


def chunkings(data: bytes) -> list[list[bytes]]:
    """Every split of ``data`` in two, plus one-byte pieces."""
    splits = [[data[:i], data[i:]] for i in range(1, len(data))]
    return [[data], *splits, [data[i : i + 1] for i in range(len(data))]]


SELECT_RESPONSE = (
    pq.build(b"T", b"\x00\x01x\x00" + b"\x00" * 18)
    + pq.build(b"D", b"\x00\x01\x00\x00\x00\x011")
    + pq.build(b"C", b"SELECT 1\x00")
    + pq.ready_for_query(pq.TX_IDLE)
)


async def test_response_is_forwarded_unchanged_and_settles_the_request_at_any_split() -> None:
    for pieces in chunkings(SELECT_RESPONSE):
        server, client = make_server()
        server.ledger.request_sent(pq.QUERY)
        for piece in pieces:
            server.data_received(piece)
        assert bytes(client.received) == SELECT_RESPONSE
        assert not server.ledger.pending
        assert server.ledger.tx_status == pq.TX_IDLE
        assert client.ready_calls >= 1
        assert server.is_clean()
        assert (server.stats.query_count, server.stats.xact_count) == (1, 1)
        assert server.stats.sent == len(SELECT_RESPONSE)


async def test_pipelined_responses_settle_one_request_per_ready_for_query() -> None:
    in_tx = pq.build(b"C", b"BEGIN\x00") + pq.ready_for_query(pq.TX_IN_BLOCK)
    for pieces in chunkings(in_tx + SELECT_RESPONSE):
        server, client = make_server()
        for _ in range(3):
            server.ledger.sync_sent(pq.SYNC)
        for piece in pieces:
            server.data_received(piece)
        assert len(server.ledger.pending) == 1  # the third Sync is still owed
        assert client.ready_calls == 0
        assert server.ledger.tx_status == pq.TX_IDLE


async def test_internal_query_answer_is_swallowed_and_the_rest_forwarded() -> None:
    set_answer = (
        pq.parameter_status("TimeZone", "Europe/Paris")
        + pq.build(b"C", b"SET\x00")
        + pq.ready_for_query(pq.TX_IDLE)
    )
    for pieces in chunkings(set_answer + SELECT_RESPONSE):
        server, client = make_server()
        server.run_internal("SET TimeZone = 'Europe/Paris'")
        server.ledger.request_sent(pq.QUERY)
        for piece in pieces:
            server.data_received(piece)
        assert bytes(client.received) == SELECT_RESPONSE
        assert server.params["TimeZone"] == "Europe/Paris"
        assert client.params["TimeZone"] == "Europe/Paris"  # the client's tracked value follows the server
        assert server.params_key == client.params_key == ("Europe/Paris",)  # so the next link sends no SET
        assert server.ledger.swallow == 0 and not server.ledger.pending


async def test_fatal_error_is_noticed() -> None:
    fatal = pq.error_response("57P01", "terminating connection due to administrator command", severity="FATAL")
    for pieces in chunkings(fatal):
        server, _ = make_server()
        server.ledger.request_sent(pq.QUERY)
        for piece in pieces:
            server.data_received(piece)
        assert server.fatal_seen


async def test_extended_copy_in_forgets_the_syncs_postgres_will_ignore() -> None:
    server, _ = make_server()
    server.ledger.sync_sent(pq.SYNC)  # libpq: Parse/Bind/Describe/Execute/Sync, then the copy data
    server.data_received(pq.build(b"G", b"\x00\x00\x00"))
    assert server.ledger.copy_in and not server.ledger.pending


async def test_simple_copy_in_keeps_the_query_owed() -> None:
    server, _ = make_server()
    server.ledger.request_sent(pq.QUERY)
    server.data_received(pq.build(b"G", b"\x00\x00\x00"))
    assert server.ledger.copy_in and list(server.ledger.pending) == [pq.QUERY]


# --- the client side ------------------------------------------------------------------------------


def make_client() -> tuple[ClientConnection, ServerConnection, FakeTransport]:
    pooler: Any = SimpleNamespace(next_client_id=lambda: 1, config=Config(), clock=time.monotonic,
                                  new_cancel_key=lambda: pq.pack_cancel_key(16, 2))
    client = ClientConnection(pooler)
    client.state = ClientState.READY
    server, _ = make_server()
    transport = FakeTransport()
    server.transport = transport  # type: ignore[assignment]
    client.server = server
    server.client = client
    return client, server, transport


EXTENDED = (
    pq.build(b"P", b"\x00select 1\x00\x00\x00")
    + pq.build(b"B", b"\x00\x00\x00\x00\x00\x00\x00\x00")
    + pq.build(b"E", b"\x00\x00\x00\x00\x00")
    + pq.SYNC_MESSAGE
)


async def test_client_messages_are_forwarded_whole_and_counted_at_any_split() -> None:
    stream = pq.query("select 1") + EXTENDED + EXTENDED
    for pieces in chunkings(stream):
        client, server, transport = make_client()
        for piece in pieces:
            client.forward(piece, server)
        assert bytes(transport.written) == stream
        assert list(server.ledger.pending) == [pq.QUERY, pq.SYNC, pq.SYNC]
        assert not server.ledger.unsynced


async def test_extended_messages_without_sync_keep_the_server() -> None:
    client, server, _ = make_client()
    client.forward(EXTENDED[:-5] + pq.build(b"H"), server)  # Parse/Bind/Execute/Flush, no Sync yet
    assert server.ledger.unsynced and not server.ledger.pending
    assert not server.is_clean()


async def test_syncs_during_copy_in_are_not_counted() -> None:
    client, server, _ = make_client()
    server.ledger.request_sent(pq.QUERY)  # COPY ... FROM STDIN
    server.ledger.copy_in_started()
    client.forward(pq.build(b"d", b"1\n") + pq.SYNC_MESSAGE + pq.build(b"c"), server)
    assert not server.ledger.copy_in and list(server.ledger.pending) == [pq.QUERY]
    server.ledger.ready_for_query(pq.TX_IDLE)
    client.forward(pq.SYNC_MESSAGE, server)
    assert list(server.ledger.pending) == [pq.SYNC]
    assert not server.is_clean()  # that Sync in the COPY makes the server unfit for anyone else (test_ledger)


async def test_half_a_header_is_held_back_until_it_is_complete() -> None:
    client, server, transport = make_client()
    message = pq.query("select 1")
    client.forward(message[:3], server)
    assert transport.written == b"" and not server.ledger.pending
    client.forward(message[3:], server)
    assert bytes(transport.written) == message and list(server.ledger.pending) == [pq.QUERY]


@pytest.mark.parametrize("length", [3, -1])
async def test_an_impossible_length_is_refused(length: int) -> None:
    client, server, transport = make_client()
    client_transport = FakeTransport()
    client.transport = client_transport  # type: ignore[assignment]
    client.pooler.pooler_error = lambda *args: None
    client.forward(pq.query("select 1") + b"Q" + length.to_bytes(4, "big", signed=True), server)
    assert bytes(transport.written) == pq.query("select 1")  # what came before is still delivered
    fields = pq.parse_error_fields(bytes(client_transport.written[5:]))
    assert fields["C"] == "08P01" and "invalid message length" in fields["M"]


async def test_terminate_is_not_forwarded() -> None:
    client, server, transport = make_client()
    client.transport = FakeTransport()  # type: ignore[assignment]
    client.forward(pq.query("select 1") + pq.TERMINATE_MESSAGE, server)
    assert bytes(transport.written) == pq.query("select 1")
    assert client.state == ClientState.CLOSED



async def test_a_failed_reset_or_check_query_marks_the_server_for_closing() -> None:
    """A cancel that lands on the pooler's own query (a DISCARD ALL after a session) leaves the old session's
    state behind: whatever error the pooler's own query gets, the server is closed, never reused."""
    for pieces in chunkings(pq.error_response("57014", "canceling statement due to user request")
                            + pq.ready_for_query(pq.TX_IDLE)):
        server, _ = make_server()
        server.client = None
        server.run_internal("DISCARD ALL")
        for piece in pieces:
            server.data_received(piece)
        assert server.stale and server.ledger.swallow == 0


async def test_a_huge_error_arriving_in_small_reads_is_gathered_in_linear_time() -> None:
    """An ErrorResponse is inspected whole, so the scanner gathers it across reads. Gathered by re-copying
    what it holds at every read, a 16 MiB error in 1 KiB reads copies some 128 GiB (4 s here); gathered
    once (pooler.wire.framing.PartialMessage), it takes milliseconds."""
    error = pq.error_response("22000", "x" * (16 * 1024 * 1024)) + pq.ready_for_query(pq.TX_IDLE)
    server, client = make_server()
    server.ledger.request_sent(pq.QUERY)
    step = 1024
    started = time.perf_counter()
    for at in range(0, len(error), step):
        server.data_received(error[at : at + step])
    elapsed = time.perf_counter() - started
    assert bytes(client.received) == error
    assert not server.ledger.pending and client.ready_calls == 1 and server.is_clean()
    assert elapsed < 1.0, f"{elapsed:.2f} s to gather a 16 MiB ErrorResponse in 1 KiB reads"
