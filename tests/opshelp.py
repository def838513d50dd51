"""What the operations tests share: the admin console through psycopg, a /metrics scrape parsed by
prometheus-client's own parser, and a way to hold clients inside a transaction at will.

``Blocker`` holds an advisory lock in a superuser session; clients that run ``BLOCKED_QUERY`` sit on a
server (an *active* server, a *linked* client) until ``release()``, so a test can freeze a pool in a
known shape (5 active servers, 25 queued clients) and read the console or the metrics while it holds.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from harness import RunningPooler
from prometheus_client.parser import text_string_to_metric_families
from support import APP_PASSWORD, APP_USER, PostgresServer

LOCK_KEY = 774411
BLOCKED_QUERY = f"SELECT pg_advisory_xact_lock_shared({LOCK_KEY})"


def console(p: RunningPooler, user: str = APP_USER, password: str = APP_PASSWORD) -> psycopg.Connection[Any]:
    """A psycopg connection to the admin console (autocommit: the console has no BEGIN, as PgBouncer's)."""
    return psycopg.connect(p.dsn("pgbouncer", user, password), autocommit=True, connect_timeout=5)


def show(p: RunningPooler, what: str) -> list[dict[str, Any]]:
    """SHOW ``what`` as a list of dicts keyed by column name."""
    with console(p) as conn, conn.cursor() as cur:
        cur.execute(f"SHOW {what}")
        assert cur.description is not None
        names = [c.name for c in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def pool_row(p: RunningPooler, database: str, user: str = APP_USER) -> dict[str, Any]:
    rows = [r for r in show(p, "POOLS") if r["database"] == database and r["user"] == user]
    assert len(rows) == 1, rows
    return rows[0]


class Blocker:
    """A superuser session holding an exclusive advisory lock: ``BLOCKED_QUERY`` waits until release()."""

    def __init__(self, postgres: PostgresServer, dbname: str) -> None:
        self.conn = psycopg.connect(postgres.dsn(dbname), autocommit=True)
        self.conn.execute("SELECT pg_advisory_lock(%s)", [LOCK_KEY])

    def release(self) -> None:
        if not self.conn.closed:
            self.conn.execute("SELECT pg_advisory_unlock(%s)", [LOCK_KEY])
            self.conn.close()


@contextmanager
def blocking(postgres: PostgresServer, dbname: str) -> Iterator[Blocker]:
    blocker = Blocker(postgres, dbname)
    try:
        yield blocker
    finally:
        blocker.release()


def http_get(port: int, path: str, timeout: float = 5.0) -> tuple[int, str, str]:
    """(status, content type, body) of a GET to the pooler's metrics port."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as response:
            return response.status, response.headers.get("Content-Type", ""), response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Content-Type", ""), exc.read().decode()


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(port: int) -> Samples:
    """Every sample of /metrics, parsed by prometheus-client's text parser: {(name, sorted labels): value}."""
    status, content_type, body = http_get(port, "/metrics")
    assert status == 200, body
    assert content_type.startswith("text/plain"), content_type
    out: Samples = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def sample(samples: Samples, metric: str, /, **labels: str) -> float:
    key = (metric, tuple(sorted(labels.items())))
    assert key in samples, f"{metric}{labels} not in /metrics; have {sorted(k for k in samples if k[0] == metric)}"
    return samples[key]
