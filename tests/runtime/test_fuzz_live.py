"""Fuzzing a live pooler over TCP with hypothesis (issue 10, item 9c): malformed startup packets, lying lengths,
random frames of every client message type after login. Whatever arrives, the pooler answers with well-formed
messages (an error is Postgres-shaped: severity, five-character SQLSTATE, message), never hangs, never logs a
traceback, and keeps serving a well-behaved client that shares its servers.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from adversity import Counter, budget
from harness import RunningPooler, make_config, running_pooler
from hypothesis import given
from hypothesis import strategies as st
from rawclient import RawClient
from support import APP_DB, APP_PASSWORD, APP_USER, PostgresServer
from test_fuzz_wire import _startup_packets

from pooler.wire import messages as pq
from pooler.wire.auth import AuthType

READ_TIMEOUT = 5.0  # a pooler that goes silent this long, with the client done sending, hangs
COUNTS = {name: Counter(name) for name in ("live_startup", "live_framed", "live_garbage")}


class LivePooler:
    """A pooler, its loop's unhandled exceptions, and a well-behaved client sharing its servers."""

    def __init__(self, running: RunningPooler) -> None:
        self.running = running
        self.exceptions: list[dict[str, Any]] = []
        running.loop.call_soon_threadsafe(running.loop.set_exception_handler, self._record)
        self.good = psycopg.connect(running.dsn(), autocommit=True)

    def _record(self, loop: object, context: dict[str, Any]) -> None:
        self.exceptions.append(context)

    def check(self) -> None:
        """No traceback so far, and the well-behaved client is served on a clean server."""
        assert not self.exceptions, self.exceptions
        sql = "select 1, pg_current_xact_id_if_assigned(), current_setting('fuzz.x', true)"
        row = self.good.execute(sql).fetchone()
        assert row in ((1, None, None), (1, None, "")), row  # nobody's transaction or SET LOCAL


@pytest.fixture(scope="module")
def live(postgres: PostgresServer) -> Iterator[LivePooler]:
    config = make_config(postgres, default_pool_size=2, auth_type=AuthType.PLAIN, query_timeout=3,
                         client_login_timeout=3)
    with running_pooler(config) as running:
        fuzz = LivePooler(running)
        yield fuzz
        fuzz.good.close()
        for counter in COUNTS.values():
            counter.report()


def well_formed(data: bytes) -> list[tuple[str, bytes]]:
    """Split what the pooler sent into messages; every one must be whole, every error Postgres-shaped."""
    messages: list[tuple[str, bytes]] = []
    pos = 0
    while pos < len(data):
        assert pos + 5 <= len(data), f"a truncated header at {pos}: {data[pos:]!r}"
        length = pq.read_int32(data, pos + 1)
        assert 4 <= length <= len(data) - pos - 1, f"a message of bad length {length} at {pos}: {data[pos:pos + 40]!r}"
        kind = chr(data[pos])
        payload = data[pos + 5 : pos + 1 + length]
        if kind == "E":
            fields = pq.parse_error_fields(payload)
            assert fields.get("S") in ("ERROR", "FATAL", "PANIC"), fields
            assert len(fields.get("C", "")) == 5 and fields.get("M"), fields
            assert "Traceback" not in fields["M"], fields
        messages.append((kind, payload))
        pos += 1 + length
    return messages


def complete_messages(data: bytes) -> list[tuple[str, bytes]]:
    """The whole messages at the start of ``data`` (the rest may still be arriving)."""
    messages: list[tuple[str, bytes]] = []
    pos = 0
    while pos + 5 <= len(data):
        length = pq.read_int32(data, pos + 1)
        if pos + 1 + length > len(data):
            break
        messages.append((chr(data[pos]), data[pos + 5 : pos + 1 + length]))
        pos += 1 + length
    return messages


def read_all(sock: socket.socket) -> bytes:
    """Everything until the pooler closes; fails if it goes silent for READ_TIMEOUT while the client is done."""
    sock.settimeout(READ_TIMEOUT)
    chunks = []
    while True:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            got = b"".join(chunks)[:200]
            raise AssertionError(f"the pooler hung: no EOF within {READ_TIMEOUT}s; got {got!r}") from None
        except ConnectionResetError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


# --- before login -------------------------------------------------------------------------------------

_SSL = struct.pack("!ii", 8, pq.SSL_REQUEST_CODE)


@budget(100)
@given(st.booleans(), _startup_packets(), st.binary(max_size=40))
def test_fuzzed_startup_gets_a_postgres_shaped_answer(
    live: LivePooler, ssl_first: bool, packet: bytes, trailer: bytes
) -> None:
    COUNTS["live_startup"].cases += 1
    with socket.create_connection(("127.0.0.1", live.running.port), timeout=READ_TIMEOUT) as sock:
        data = (_SSL if ssl_first else b"") + packet + trailer
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused before the client was done sending: fine, as long as what came back is right
        reply = read_all(sock)
    if ssl_first:
        assert reply[:1] == b"N", reply[:40]
        reply = reply[1:]
    if packet[4:8] in (struct.pack("!i", pq.SSL_REQUEST_CODE), struct.pack("!i", pq.GSSENC_REQUEST_CODE)):
        reply = reply[1:] if reply[:1] == b"N" else reply
    well_formed(reply)
    live.check()


# --- after login ----------------------------------------------------------------------------------

_SQL = st.sampled_from([
    "select 1", "begin", "commit", "rollback", "select pg_sleep(0.01)", "set local fuzz.x = 'leak'",
    "set fuzz.x = ''", "copy (select 1) to stdout", "listen fuzz", "select 1/0", "declare c cursor for select 1",
    "deallocate pooler_1", "prepare p as select 1", "show fuzz.x", "", ";", "select $1",
]) | st.text(max_size=30)
_FRAME_KINDS = b"QPBDECSHFdcfXp" + bytes(range(0x41, 0x5B))


def _framed_message() -> st.SearchStrategy[bytes]:
    """One client message with a true length: a known type with a random or SQL-ish body, or any type."""
    query = _SQL.map(lambda sql: pq.query(sql.replace("\x00", "")))
    parse = st.tuples(st.sampled_from(["", "s1", "s2"]), _SQL, st.binary(max_size=8)).map(
        lambda t: pq.build(b"P", pq.cstring(t[0]) + pq.cstring(t[1].replace("\x00", "")) + t[2]))
    function_call = st.tuples(st.integers(1_000_000, 2**31 - 1), st.binary(max_size=20)).map(
        lambda t: pq.build(b"F", struct.pack("!i", t[0]) + t[1]))  # OIDs no function has: never runs anything
    known = st.sampled_from([
        pq.SYNC_MESSAGE, pq.build(b"H"), pq.build(b"E", b"\x00\x00\x00\x00\x00"),
        pq.build(b"B", b"\x00s1\x00\x00\x00\x00\x00\x00\x00"), pq.build(b"D", b"Ss1\x00"), pq.build(b"C", b"Ss1\x00"),
        pq.build(b"d", b"1\n"), pq.build(b"c"), pq.build(b"f", b"x\x00"),
    ])
    anything = st.tuples(st.sampled_from(list(_FRAME_KINDS)).filter(lambda k: k not in b"FX"),
                         st.binary(max_size=40)).map(lambda t: pq.build(bytes((t[0],)), t[1]))
    return st.one_of(query, parse, function_call, known, anything)


def _login(live: LivePooler) -> RawClient:
    client = RawClient(live.running.port, timeout=READ_TIMEOUT)
    client.login(APP_USER, APP_PASSWORD, APP_DB)
    return client


@budget(25)
@given(st.lists(_framed_message(), min_size=1, max_size=8), st.integers(0, 64))
def test_fuzzed_frames_after_login_are_answered_and_the_session_goes_on_or_ends_cleanly(
    live: LivePooler, frames: list[bytes], split: int
) -> None:
    """True lengths: after the frames a Sync and a sentinel query must be answered, unless the pooler or
    Postgres ended the session with an error (never silence)."""
    COUNTS["live_framed"].cases += 1
    client = _login(live)
    try:
        # The sentinel: Sync ends any extended-protocol error skip, ROLLBACK any transaction the frames left.
        data = b"".join(frames) + pq.SYNC_MESSAGE + pq.query("rollback; select 'sentinel'")
        try:
            if split:
                for pos in range(0, len(data), split):
                    client.send(data[pos : pos + split])
            else:
                client.send(data)
        except (BrokenPipeError, ConnectionResetError):
            pass
        received = bytes(client._buf)
        client.sock.settimeout(READ_TIMEOUT)
        while True:
            messages = complete_messages(received)
            sentinel = [i for i, (k, p) in enumerate(messages) if k == "D" and p.endswith(b"sentinel")]
            if sentinel and any(k == "Z" for k, _ in messages[sentinel[-1]:]):
                well_formed(received)
                break
            try:
                chunk = client.sock.recv(65536)
            except TimeoutError:
                raise AssertionError(f"no answer to the sentinel within {READ_TIMEOUT}s: {messages[-8:]!r}") from None
            except ConnectionResetError:
                chunk = b""
            if not chunk:  # closed: a FATAL must say why, unless the client sent Terminate
                messages = well_formed(received)
                assert any(k == "E" and pq.parse_error_fields(p).get("S") == "FATAL" for k, p in messages) or any(
                    f[:1] == b"X" for f in frames), messages[-5:]
                break
            received += chunk
    finally:
        client.close()
    live.check()


@budget(60)
@given(st.binary(min_size=1, max_size=80))
def test_garbage_after_login_ends_with_an_error_or_is_ignored_never_a_hang(live: LivePooler, garbage: bytes) -> None:
    """Any bytes at all (lengths that lie included), then the client stops sending: the pooler closes within
    READ_TIMEOUT, with well-formed messages."""
    COUNTS["live_garbage"].cases += 1
    client = _login(live)
    try:
        try:
            client.send(garbage)
            client.shutdown_write()
        except (BrokenPipeError, ConnectionResetError):
            pass
        well_formed(bytes(client._buf) + read_all(client.sock))
    finally:
        client.close()
    live.check()
