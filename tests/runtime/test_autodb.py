"""autodb_idle_timeout (issue 10, item 5): pools of databases matched by ``*`` are freed once unused.

Logins to made-up names through a ``*`` entry that maps every name to the test database: each makes
a pool; once its clients and servers are gone for autodb_idle_timeout, the pool is freed with its
SHOW STATS row and its metrics series, while a declared database's pool and a used one stay.
"""

from __future__ import annotations

import time

import psycopg
import pytest
from backends import wait_until_sync
from harness import RunningPooler, free_port, make_config, running_pooler
from opshelp import scrape, show
from support import APP_DB, APP_USER, PostgresServer

from pooler.config import DatabaseConfig

pytestmark = pytest.mark.usefixtures("no_leftover_backends")


def pool_names(p: RunningPooler) -> set[str]:
    return p.call(lambda pl: {pool.db.name for pool in pl.pools.values()})


def series_databases(port: int) -> set[str]:
    return {dict(labels).get("database", "") for (name, labels) in scrape(port) if name.startswith("pgbouncer_pools")}


def test_pools_of_made_up_names_are_freed_after_autodb_idle_timeout(postgres: PostgresServer) -> None:
    dbs = {
        APP_DB: DatabaseConfig(APP_DB, host=postgres.host, port=postgres.port),
        "*": DatabaseConfig("*", host=postgres.host, port=postgres.port, dbname=APP_DB),
    }
    metrics_port = free_port()
    config = make_config(postgres, databases=dbs, autodb_idle_timeout=0.5, server_idle_timeout=0.2,
                         metrics_port=metrics_port, stats_users=(APP_USER,))
    names = [f"made_up_{i}" for i in range(20)]
    with running_pooler(config) as p:
        for name in names:
            with psycopg.connect(p.dsn(name), autocommit=True) as conn:
                assert conn.execute("select current_database()").fetchone() == (APP_DB,)
        with psycopg.connect(p.dsn(APP_DB), autocommit=True) as declared, \
                psycopg.connect(p.dsn("kept_in_use"), autocommit=True) as in_use:
            declared.execute("select 1")
            in_use.execute("select 1")
            assert set(names) <= pool_names(p)
            assert set(names) <= {row["database"] for row in show(p, "STATS")}
            assert set(names) <= series_databases(metrics_port)
            started = time.monotonic()
            wait_until_sync(lambda: not (set(names) & pool_names(p)), timeout=10,
                            what="the made-up databases' pools to be freed")
            assert time.monotonic() - started >= 0.4  # not before the servers closed and the timeout passed
            assert {APP_DB, "kept_in_use"} <= pool_names(p)  # declared, or with a client: kept
            assert not (set(names) & {row["database"] for row in show(p, "STATS")})
            assert not (set(names) & series_databases(metrics_port))
            assert p.call(lambda pl: not (set(names) & set(pl.db_servers)))
        with psycopg.connect(p.dsn(names[0]), autocommit=True) as again:  # a freed name simply comes back
            assert again.execute("select 1").fetchone() == (1,)


def test_autodb_idle_timeout_zero_keeps_them(postgres: PostgresServer) -> None:
    dbs = {"*": DatabaseConfig("*", host=postgres.host, port=postgres.port, dbname=APP_DB)}
    config = make_config(postgres, databases=dbs, autodb_idle_timeout=0, server_idle_timeout=0.1)
    with running_pooler(config) as p:
        with psycopg.connect(p.dsn("made_up_kept"), autocommit=True) as conn:
            conn.execute("select 1")
        wait_until_sync(lambda: p.pool_stat("made_up_kept", APP_USER)["servers"] == 0, what="servers to close")
        time.sleep(0.3)
        assert "made_up_kept" in pool_names(p)
