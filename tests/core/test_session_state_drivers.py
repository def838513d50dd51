"""No false alarms from drivers' own housekeeping: each real driver's traffic, recorded, must not warn.

The table is the drivers' real traffic, not a list we wrote: every driver runs a web app's pattern
(check a connection out of its pool, run a query or a transaction, give it back, again) through a
recording proxy in front of the pooled endpoint, so whatever it sends on its own — asyncpg's pool reset
(``SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL``), SQLAlchemy's and psycopg_pool's
checks and rollbacks, Django's time zone setup and health checks, node-postgres' and postgres.js' pools —
is captured as it leaves the driver. Every recorded statement must get no verdict from the checker, and
the pooler must have sent no session-state warning for it.

Each scenario also sends one statement that *must* warn (``SET search_path``) through the same driver,
beside the unit tests' must-warn list (test_session_state.py): it proves the recording and the pooler's
checks really see that driver's traffic, so a silent run cannot pass by seeing nothing.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import asyncpg
import psycopg
import pytest
from harness import RunningPooler, make_config, running_pooler
from recorder import Recording, recording_proxy
from support import APP_DB, APP_PASSWORD, APP_USER, PostgresServer

from pooler.core.session_state import SessionStateChecker
from pooler.runtime.process import Pooler

NODE_DIR = Path(__file__).parents[1] / "node"
ROUNDS = 5
HAZARD = "SET search_path = public"


def _url(port: int, scheme: str = "postgresql") -> str:
    return f"{scheme}://{APP_USER}:{APP_PASSWORD}@127.0.0.1:{port}/{APP_DB}"


# --- the drivers, each as a web app uses its pool ------------------------------------------------------


def run_asyncpg(port: int) -> None:
    async def main() -> None:
        pool = await asyncpg.create_pool(_url(port), min_size=1, max_size=1)
        try:
            for i in range(ROUNDS):
                async with pool.acquire() as conn:  # release runs asyncpg's reset
                    assert await conn.fetchval("select $1::int", i) == i
                async with pool.acquire() as conn, conn.transaction():
                    await conn.execute("select 1")
            async with pool.acquire() as conn:
                await conn.execute(HAZARD)
        finally:
            await pool.close()

    asyncio.run(main())


def run_psycopg_pool(port: int) -> None:
    from psycopg_pool import ConnectionPool

    with ConnectionPool(_url(port), min_size=1, max_size=1, check=ConnectionPool.check_connection,
                        open=True) as pool:
        for i in range(ROUNDS):
            with pool.connection() as conn:  # commits, or rolls back, on the way back
                assert conn.execute("select %s::int", (i,)).fetchone() == (i,)
            try:
                with pool.connection() as conn:
                    conn.execute("select 1")
                    raise RuntimeError("a request that failed mid-transaction: the pool rolls it back")
            except RuntimeError:
                pass
        with pool.connection() as conn:
            conn.execute(HAZARD)


def run_sqlalchemy(port: int) -> None:
    from sqlalchemy import create_engine, text

    engine = create_engine(_url(port, "postgresql+psycopg"), pool_size=1, max_overflow=0, pool_pre_ping=True)
    try:
        for i in range(ROUNDS):
            with engine.connect() as conn:  # reset on return: rollback
                assert conn.execute(text("select :v"), {"v": i}).scalar() == i
            with engine.begin() as conn:
                conn.execute(text("select 1"))
        with engine.connect() as conn:
            conn.execute(text(HAZARD))
            conn.commit()
    finally:
        engine.dispose()


_DJANGO = """
import os, sys
import django
from django.conf import settings

port = int(sys.argv[1])
base = {"ENGINE": "django.db.backends.postgresql", "NAME": os.environ["APP_DB"], "USER": os.environ["APP_USER"],
        "PASSWORD": os.environ["APP_PASSWORD"], "HOST": "127.0.0.1", "PORT": port}
settings.configure(
    USE_TZ=True,
    TIME_ZONE="Europe/Paris",
    DATABASES={
        # persistent connections, health-checked at each request (Django's recommended production setup)
        "default": {**base, "CONN_MAX_AGE": 60, "CONN_HEALTH_CHECKS": True},
        # Django >= 5.1's connection pool (psycopg_pool)
        "pooled": {**base, "CONN_MAX_AGE": 0, "OPTIONS": {"pool": {"min_size": 1, "max_size": 1}}},
    },
)
django.setup()
from django.core.signals import request_finished, request_started
from django.db import connections, transaction

for i in range(int(sys.argv[2])):
    for alias in ("default", "pooled"):
        request_started.send(sender=None)  # closes old or broken connections, as a request does
        with connections[alias].cursor() as cursor:
            cursor.execute("select %s::int", [i])
            assert cursor.fetchone() == (i,)
        with transaction.atomic(using=alias), connections[alias].cursor() as cursor:
            cursor.execute("select 1")
        request_finished.send(sender=None)
with connections["default"].cursor() as cursor:
    cursor.execute(sys.argv[3])
connections.close_all()
"""


def run_django(port: int) -> None:
    env = {**os.environ, "APP_DB": APP_DB, "APP_USER": APP_USER, "APP_PASSWORD": APP_PASSWORD}
    result = subprocess.run([sys.executable, "-c", _DJANGO, str(port), str(ROUNDS), HAZARD], env=env,
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr


def run_node(port: int) -> None:
    node = shutil.which("node")
    assert node is not None, "Node.js is required for the driver tests"
    assert (NODE_DIR / "node_modules" / "pg").is_dir(), "run `npm ci` in tests/node (scripts/test does)"
    result = subprocess.run([node, "pool_reuse.mjs", _url(port), str(ROUNDS)], cwd=NODE_DIR, capture_output=True,
                            text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {"ok": True}


#: (driver, scenario, a statement its own housekeeping is known to send, to show the recording saw it).
DRIVERS: list[tuple[str, Callable[[int], None], str | None]] = [
    ("asyncpg", run_asyncpg, "RESET ALL"),
    ("psycopg_pool", run_psycopg_pool, None),
    ("sqlalchemy", run_sqlalchemy, None),
    ("django", run_django, "set_config('TimeZone'"),
    ("node", run_node, None),
]


@pytest.fixture(scope="module")
def warn_pooler(postgres: PostgresServer) -> Iterator[RunningPooler]:
    with running_pooler(make_config(postgres, default_pool_size=2)) as running:  # warn is the default
        yield running


def warnings_counted(pooler: RunningPooler) -> dict[str, int]:
    def read(p: Pooler) -> dict[str, int]:
        total: dict[str, int] = {}
        for pool in p.pools.values():
            for kind, n in pool.stats.session_state.items():
                total[kind] = total.get(kind, 0) + n
        return total

    return pooler.call(read)


@pytest.mark.parametrize(("name", "scenario", "marker"), DRIVERS, ids=[d[0] for d in DRIVERS])
def test_driver_housekeeping_does_not_warn(warn_pooler: RunningPooler, name: str,
                                           scenario: Callable[[int], None], marker: str | None) -> None:
    before = warnings_counted(warn_pooler)
    recording: Recording
    with recording_proxy(warn_pooler.port) as (port, recording):
        scenario(port)
    sent = recording.sql()
    assert recording.connections >= 1 and sent, f"{name}: nothing recorded"
    housekeeping = [sql for sql in sent if sql.strip() != HAZARD]
    assert len(housekeeping) == len(sent) - 1, f"{name}: the hazard was not recorded once: {sent}"
    if marker is not None:
        assert any(marker in sql for sql in housekeeping), f"{name}: {marker!r} not in {housekeeping}"
    checker = SessionStateChecker()
    for sql in housekeeping:
        for in_transaction in (False, True):
            assert checker.check(sql, in_transaction) == (), f"{name} sends {sql!r} on its own: a false alarm"
    assert [f.kind for f in checker.check(HAZARD, False)] == ["set"]
    after = warnings_counted(warn_pooler)
    # The pooler warned about the one hazard and nothing else this driver sent.
    assert {k: after.get(k, 0) - before.get(k, 0) for k in after if after.get(k, 0) != before.get(k, 0)} == {
        "set": 1
    }, sent


def test_the_recorded_housekeeping_is_what_the_docs_list(warn_pooler: RunningPooler) -> None:
    """asyncpg's pool reset, as the issue and docs/session-state.md quote it, is what asyncpg really sends."""
    with recording_proxy(warn_pooler.port) as (port, recording):
        run_asyncpg(port)
    resets = [sql for sql in recording.sql() if "RESET ALL" in sql]
    expected = "SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL;"
    assert resets and all(" ".join(r.split()) == expected for r in resets), resets
    with psycopg.connect(warn_pooler.dsn(), autocommit=True) as conn:  # the pooler serves on, unharmed
        assert conn.execute("select 1").fetchone() == (1,)
