"""What the pool, timeout, server-lifecycle and direct-endpoint tests look at: the real backends.

A limit is only believed when Postgres itself shows it, so ``Activity`` reads ``pg_stat_activity`` as
superuser (client backends of one database/user). ``wait_until`` is the one way these tests wait: it
polls a condition with a bound and says what it was waiting for when the bound is hit. ``RawClient``
speaks the wire protocol byte by byte, for what drivers will not do on purpose (send half a startup
packet, vanish mid-COPY, quote someone else's cancel key); it logs in with ``auth_type = trust``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import inspect
import socket
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import psycopg
from psycopg.rows import dict_row
from support import APP_DB, APP_USER, PostgresServer

T = TypeVar("T")

#: Roles whose backends the tests count; leftovers of a previous test must be gone before the next.
TEST_ROLES = ("app", "md5user")


async def wait_until(
    condition: Callable[[], T | Awaitable[T]], *, timeout: float = 5.0, interval: float = 0.02, what: str = ""
) -> T:
    """Poll ``condition`` (sync or async) until it returns something truthy; return that value."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value  # type: ignore[return-value]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or condition}; last value {value!r}")
        await asyncio.sleep(interval)


def in_thread(fn: Callable[[], T]) -> concurrent.futures.Future[T]:
    """Run a blocking call (a sync driver's query) in the background; ``.result(timeout)`` to collect it."""
    executor = concurrent.futures.ThreadPoolExecutor(1)
    try:
        return executor.submit(fn)
    finally:
        executor.shutdown(wait=False)


def wait_until_sync(condition: Callable[[], T], *, timeout: float = 5.0, interval: float = 0.02, what: str = "") -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or condition}; last value {value!r}")
        time.sleep(interval)


_ACTIVITY = """
    SELECT pid, datname, usename, state, query, backend_start, xact_start, wait_event_type
    FROM pg_stat_activity
    WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()
      AND (%(db)s::text IS NULL OR datname = %(db)s) AND (%(user)s::text IS NULL OR usename = %(user)s)
    ORDER BY pid
"""


class Activity:
    """``pg_stat_activity`` as superuser, over one autocommit connection (sync and async flavours)."""

    def __init__(self, postgres: PostgresServer) -> None:
        self.dsn = postgres.dsn()
        self._sync: psycopg.Connection[dict[str, Any]] | None = None
        self._async: psycopg.AsyncConnection[dict[str, Any]] | None = None

    def close(self) -> None:
        if self._sync is not None:
            self._sync.close()

    async def aclose(self) -> None:
        if self._async is not None:
            await self._async.close()

    # sync ---------------------------------------------------------------------------------------------

    def rows(self, db: str | None = APP_DB, user: str | None = APP_USER) -> list[dict[str, Any]]:
        if self._sync is None:
            self._sync = psycopg.connect(self.dsn, autocommit=True, row_factory=dict_row)
        return self._sync.execute(_ACTIVITY, {"db": db, "user": user}).fetchall()

    def pids(self, db: str | None = APP_DB, user: str | None = APP_USER) -> set[int]:
        return {r["pid"] for r in self.rows(db, user)}

    def execute(self, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
        if self._sync is None:
            self._sync = psycopg.connect(self.dsn, autocommit=True, row_factory=dict_row)
        cur = self._sync.cursor(row_factory=psycopg.rows.tuple_row)
        cur.execute(sql, params)
        return cur.fetchall() if cur.description else []

    # async --------------------------------------------------------------------------------------------

    async def arows(self, db: str | None = APP_DB, user: str | None = APP_USER) -> list[dict[str, Any]]:
        if self._async is None:
            self._async = await psycopg.AsyncConnection.connect(self.dsn, autocommit=True, row_factory=dict_row)
        cur = await self._async.execute(_ACTIVITY, {"db": db, "user": user})
        return await cur.fetchall()

    async def apids(self, db: str | None = APP_DB, user: str | None = APP_USER) -> set[int]:
        return {r["pid"] for r in await self.arows(db, user)}

    async def acount(self, db: str | None = APP_DB, user: str | None = APP_USER) -> int:
        return len(await self.arows(db, user))

    async def aexecute(self, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
        if self._async is None:
            self._async = await psycopg.AsyncConnection.connect(self.dsn, autocommit=True, row_factory=dict_row)
        cur = self._async.cursor(row_factory=psycopg.rows.tuple_row)
        await cur.execute(sql, params)
        return await cur.fetchall() if cur.description else []


class PeakSampler:
    """Samples the number of backends of one (database, user) in the background and keeps the peak."""

    def __init__(self, activity: Activity, db: str | None = APP_DB, user: str | None = APP_USER) -> None:
        self.activity = activity
        self.db = db
        self.user = user
        self.peak = 0
        self.samples = 0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            self.peak = max(self.peak, await self.activity.acount(self.db, self.user))
            self.samples += 1
            await asyncio.sleep(0.005)

    async def __aenter__(self) -> PeakSampler:
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


def wait_for_no_test_backends(postgres: PostgresServer, timeout: float = 5.0) -> None:
    """Backends of earlier tests (a stopped pooler's, a closed direct session's) go away asynchronously;
    counts taken by the next test must not include them. Any still there after ``timeout`` (a test that
    leaked a connection) are terminated, so one leak does not fail every later test."""
    query = (
        "SELECT pid, usename, state, query FROM pg_stat_activity"
        " WHERE backend_type = 'client backend' AND usename = ANY(%s)"
    )
    with psycopg.connect(postgres.dsn(), autocommit=True) as conn:
        for attempt in range(2):
            deadline = time.monotonic() + timeout
            while True:
                rows = conn.execute(query, [list(TEST_ROLES)]).fetchall()
                if not rows:
                    return
                if time.monotonic() > deadline:
                    break
                time.sleep(0.02)
            if attempt == 0:
                conn.execute(f"SELECT pg_terminate_backend(pid) FROM ({query}) leftovers", [list(TEST_ROLES)])
        raise AssertionError(f"backends of an earlier test are still there, even after pg_terminate_backend: {rows}")


# -- a raw wire-protocol client ------------------------------------------------------------------------


def startup_packet(params: dict[str, str]) -> bytes:
    body = struct.pack("!i", 196608) + b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in params.items())
    body += b"\0"
    return struct.pack("!i", len(body) + 4) + body


def message(kind: bytes, payload: bytes = b"") -> bytes:
    return kind + struct.pack("!i", len(payload) + 4) + payload


def query_message(sql: str) -> bytes:
    return message(b"Q", sql.encode() + b"\0")


def cancel_packet(pid: int, secret: int) -> bytes:
    return struct.pack("!iiii", 16, 80877102, pid, secret)


def error_fields(payload: bytes) -> dict[str, str]:
    fields: dict[str, str] = {}
    for part in payload.split(b"\0"):
        if part:
            fields[chr(part[0])] = part[1:].decode()
    return fields


@dataclass
class Message:
    kind: bytes
    payload: bytes

    @property
    def error(self) -> dict[str, str]:
        assert self.kind in (b"E", b"N"), self
        return error_fields(self.payload)


class RawClient:
    """A byte-level Postgres client over asyncio streams (for a pooler with ``auth_type = trust``)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.key: tuple[int, int] | None = None

    @classmethod
    async def open(cls, port: int, host: str = "127.0.0.1") -> RawClient:
        reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer)

    @classmethod
    async def login(cls, port: int, database: str = APP_DB, user: str = APP_USER) -> RawClient:
        client = await cls.open(port)
        client.send(startup_packet({"user": user, "database": database}))
        messages = await client.until_ready()
        errors = [m for m in messages if m.kind == b"E"]
        assert not errors, errors[0].error
        return client

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def read(self, timeout: float = 5.0) -> Message:
        async with asyncio.timeout(timeout):
            header = await self.reader.readexactly(5)
            kind, length = header[:1], struct.unpack("!i", header[1:])[0]
            payload = await self.reader.readexactly(length - 4)
        if kind == b"K":
            self.key = struct.unpack("!ii", payload)
        return Message(kind, payload)

    async def until(self, kind: bytes, timeout: float = 5.0) -> list[Message]:
        """Messages up to and including the first of ``kind`` (an ErrorResponse ends it too)."""
        out: list[Message] = []
        while True:
            msg = await self.read(timeout)
            out.append(msg)
            if msg.kind == kind or (msg.kind == b"E" and msg.error.get("S") == "FATAL"):
                return out

    async def until_ready(self, timeout: float = 5.0) -> list[Message]:
        return await self.until(b"Z", timeout)

    async def query(self, sql: str, timeout: float = 5.0) -> list[Message]:
        self.send(query_message(sql))
        return await self.until_ready(timeout)

    async def closed_by_peer(self, timeout: float = 5.0) -> bytes:
        """Everything the peer sends until it closes the connection."""
        async with asyncio.timeout(timeout):
            return await self.reader.read()

    def abort(self) -> None:
        """Vanish without a Terminate: an RST, as when a client process dies."""
        sock = self.writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.transport.abort()

    async def close(self) -> None:
        if not self.writer.is_closing():
            self.writer.write(message(b"X"))
            self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


def rows_of(messages: list[Message]) -> list[list[str | None]]:
    """DataRow values (text) from a simple query's answer."""
    out: list[list[str | None]] = []
    for m in messages:
        if m.kind != b"D":
            continue
        (count,) = struct.unpack_from("!h", m.payload)
        pos = 2
        row: list[str | None] = []
        for _ in range(count):
            (length,) = struct.unpack_from("!i", m.payload, pos)
            pos += 4
            if length < 0:
                row.append(None)
            else:
                row.append(m.payload[pos : pos + length].decode())
                pos += length
        out.append(row)
    return out


def errors_of(messages: list[Message]) -> list[dict[str, str]]:
    return [m.error for m in messages if m.kind == b"E"]


def pid_of(conn: psycopg.Connection[Any]) -> int:
    """The backend pid a psycopg connection is using now (through the pooler: the server of this moment)."""
    row = conn.execute("SELECT pg_backend_pid()").fetchone()
    assert row is not None
    return int(row[0])
