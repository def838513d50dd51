"""What the client-connection tests share (tests/net/test_client.py, tests/net/test_login.py): psycopg with a
timeout, checks that the pooler still serves, login failures read through psycopg and the raw client."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from harness import RunningPooler
from rawclient import LoginFailedError, Message, RawClient
from support import APP_DB, PostgresServer

from pooler.wire import messages as pq

Conn = psycopg.Connection[tuple[Any, ...]]


def connect(dsn: str, *, autocommit: bool = True, **kwargs: Any) -> Conn:
    """psycopg with a timeout; no server-side prepared statements (they are not pooled yet)."""
    return psycopg.connect(dsn, connect_timeout=10, autocommit=autocommit, prepare_threshold=None, **kwargs)


def assert_serving(p: RunningPooler) -> None:
    """The pooler still logs in and runs queries for a fresh client."""
    with connect(p.dsn()) as conn:
        assert conn.execute("select 41 + 1").fetchone() == (42,)


def assert_serving_as(p: RunningPooler, user: str, password: str) -> None:
    with connect(p.dsn(APP_DB, user, password)) as conn:
        assert conn.execute("select 1").fetchone() == (1,)


def psycopg_login_error(dsn: str) -> str:
    with pytest.raises(psycopg.OperationalError) as info:
        psycopg.connect(dsn, connect_timeout=10)
    return str(info.value)


def raw_login_error(
    port: int, user: str, password: str | None, database: str = APP_DB, **params: str
) -> dict[str, str]:
    """Log in with the raw client, which must be refused with one FATAL and then disconnected."""
    with RawClient(port) as raw:
        raw.startup({"user": user, "database": database, **params})
        with pytest.raises(LoginFailedError) as info:
            raw.authenticate(user, password)
        assert raw.read_message() is None, "the connection must close after a FATAL login error"
    fields = info.value.fields
    assert fields["S"] == "FATAL", fields
    return fields


def raw_fatal_after(port: int, data: bytes) -> dict[str, str]:
    """Send ``data`` on a fresh connection: the pooler must answer with one FATAL and close."""
    with RawClient(port) as raw:
        raw.send(data)
        return raw.expect_fatal()


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0, what: str = "condition") -> None:
    """Poll a condition the pooler reaches asynchronously (its state lives on another thread)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def auth_request_codes(messages: list[Message]) -> list[int]:
    return [pq.read_int32(m.payload) for m in messages if m.kind == "R"]


def kinds(messages: list[Message]) -> str:
    return "".join(m.kind for m in messages)


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


def pg_authid_secret(postgres: PostgresServer, user: str) -> str:
    with psycopg.connect(postgres.dsn(), autocommit=True) as conn:
        row = conn.execute("select rolpassword from pg_authid where rolname = %s", [user]).fetchone()
    assert row is not None and row[0]
    return str(row[0])
