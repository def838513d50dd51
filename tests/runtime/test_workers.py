"""``workers = N``: N processes on one port, pool sizes shared so the totals hold, cancels that cross workers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import psutil
import psycopg
import pytest
from harness import free_port, make_config
from support import APP_DB, APP_PASSWORD, APP_USER, PostgresServer

from pooler.config import DatabaseConfig, UserConfig
from pooler.runtime.workers import MAX_WORKERS, share, worker_config


@pytest.mark.parametrize(("total", "count"), [(20, 2), (21, 2), (5, 3), (100, 16), (3, 2)])
def test_shares_add_up_to_the_total(total: int, count: int) -> None:
    assert sum(share(total, i, count) for i in range(count)) == total


def test_a_share_is_never_zero_and_no_limit_stays_no_limit() -> None:
    assert [share(1, i, 3) for i in range(3)] == [1, 1, 1]  # every worker can serve someone
    assert share(0, 1, 4) == 0  # 0 means "no limit" for the caps: it must not become a limit


def test_worker_config_divides_every_size_and_cap(postgres: PostgresServer) -> None:
    config = make_config(
        postgres, default_pool_size=20, max_client_conn=1000, max_db_connections=50, metrics_port=9127,
        databases={"d": DatabaseConfig(name="d", pool_size=7, max_db_connections=9)},
        users={"u": UserConfig(name="u", pool_size=4, max_user_connections=5)},
    )
    shares = [worker_config(config, i, 2) for i in range(2)]
    assert sum(c.settings.default_pool_size for c in shares) == 20
    assert sum(c.settings.max_client_conn for c in shares) == 1000
    assert sum(c.settings.max_db_connections for c in shares) == 50
    assert sum(c.databases["d"].pool_size or 0 for c in shares) == 7
    assert sum(c.databases["d"].max_db_connections or 0 for c in shares) == 9
    assert sum(c.users["u"].pool_size or 0 for c in shares) == 4
    assert sum(c.users["u"].max_user_connections or 0 for c in shares) == 5
    assert [c.settings.metrics_port for c in shares] == [9127, 9128]  # one scrape target per worker
    assert all(c.settings.so_reuseport for c in shares)


@contextmanager
def two_workers(postgres: PostgresServer, pool_size: int) -> Iterator[tuple[subprocess.Popen[str], int]]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("POOLER_")}
    env.update(
        DATABASE_URL=postgres.dsn(APP_DB, APP_USER, APP_PASSWORD), POOLER_LISTEN_PORT=str(port),
        POOLER_WORKERS="2", POOLER_DEFAULT_POOL_SIZE=str(pool_size), POOLER_METRICS_PORT="0",
        POOLER_AUTH_TYPE="scram-sha-256", POOLER_LOG_CONNECTIONS="0", POOLER_LOG_DISCONNECTIONS="0")
    proc = subprocess.Popen([sys.executable, "-m", "pooler", "run"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, proc.communicate()
            try:
                psycopg.connect(dsn(port), connect_timeout=2).close()
                break
            except psycopg.OperationalError:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        yield proc, port
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


def dsn(port: int) -> str:
    return f"postgresql://{APP_USER}:{APP_PASSWORD}@127.0.0.1:{port}/{APP_DB}"


def worker_of(conn: psycopg.Connection[object]) -> int:
    return conn.info.backend_pid % MAX_WORKERS  # our BackendKeyData carries the worker in its low bits


def test_two_workers_share_the_port_the_pool_and_cancels(postgres: PostgresServer) -> None:
    with two_workers(postgres, pool_size=4) as (proc, port):
        workers = psutil.Process(proc.pid).children()
        assert len(workers) == 2
        conns = [psycopg.connect(dsn(port), autocommit=True) for _ in range(24)]
        try:
            assert {worker_of(c) for c in conns} == {0, 1}  # the kernel spreads clients over both

            # 24 clients holding a server each for a moment: never more than 4 backends in total.
            peak = 0
            stop = threading.Event()

            def sample() -> None:
                nonlocal peak
                with psycopg.connect(postgres.dsn(APP_DB), autocommit=True) as admin:
                    while not stop.is_set():
                        row = admin.execute(
                            "select count(*) from pg_stat_activity where datname = %s and usename = %s "
                            "and backend_type = 'client backend'", (APP_DB, APP_USER)).fetchone()
                        peak = max(peak, row[0] if row else 0)
                        time.sleep(0.01)

            sampler = threading.Thread(target=sample)
            sampler.start()
            threads = [threading.Thread(target=c.execute, args=("select pg_sleep(0.2)",)) for c in conns]
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
            stop.set()
            sampler.join(10)
            assert 1 < peak <= 4

            # Cancels: each arrives on a fresh connection at whichever worker the kernel picks; those
            # landing on the other worker are relayed. Every one must cancel its own query, quickly.
            for conn in conns[:8]:
                timer = threading.Timer(0.3, conn.cancel_safe)
                timer.start()
                started = time.monotonic()
                with pytest.raises(psycopg.errors.QueryCanceled):
                    conn.execute("select pg_sleep(10)")
                assert time.monotonic() - started < 5
                timer.join()
        finally:
            for c in conns:
                c.close()
        proc.send_signal(signal.SIGTERM)  # the parent passes it on; everyone leaves
        assert proc.wait(20) == 0
        assert not [w for w in workers if w.is_running() and w.status() != psutil.STATUS_ZOMBIE]
