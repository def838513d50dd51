"""Effective values: a [users] entry beats a [databases] entry beats [pgbouncer], as in PgBouncer."""

from __future__ import annotations

from pathlib import Path

import pytest
from confhelp import ini

from pooler.config import (
    Config,
    DatabaseConfig,
    PoolMode,
    effective_client_idle_timeout,
    effective_idle_transaction_timeout,
    effective_max_db_connections,
    effective_max_user_connections,
    effective_min_pool_size,
    effective_pool_mode,
    effective_pool_size,
    effective_query_timeout,
    effective_query_wait_timeout,
    effective_reserve_pool_size,
    find_database,
    load_config,
)


@pytest.fixture
def layered(tmp_path: Path) -> Config:
    return load_config(
        ini(
            tmp_path,
            "pool_mode = transaction\ndefault_pool_size = 20\nreserve_pool_size = 1\nmin_pool_size = 2\n"
            "max_db_connections = 50\nmax_user_connections = 60\nquery_timeout = 1\nquery_wait_timeout = 2\n"
            "idle_transaction_timeout = 3\nclient_idle_timeout = 4",
            databases="plain = host=h\n"
            "tuned = host=h pool_mode=session pool_size=10 reserve_pool=5 min_pool_size=3 "
            "max_db_connections=30",
            users="alice = pool_mode=statement pool_size=7 reserve_pool_size=6 max_user_connections=8 "
            "query_timeout=10 query_wait_timeout=20 idle_transaction_timeout=30 client_idle_timeout=40\n"
            "bob = max_user_connections=9",
        ),
        {},
    )


def test_user_beats_database_beats_global(layered: Config) -> None:
    plain, tuned = layered.databases["plain"], layered.databases["tuned"]

    assert effective_pool_mode(layered, plain, "carol") is PoolMode.TRANSACTION
    assert effective_pool_mode(layered, tuned, "carol") is PoolMode.SESSION
    assert effective_pool_mode(layered, tuned, "alice") is PoolMode.STATEMENT
    # bob's entry leaves pool_mode unset, so the database's applies
    assert effective_pool_mode(layered, tuned, "bob") is PoolMode.SESSION

    assert effective_pool_size(layered, plain, "carol") == 20
    assert effective_pool_size(layered, tuned, "carol") == 10
    assert effective_pool_size(layered, tuned, "alice") == 7

    assert effective_reserve_pool_size(layered, plain, "carol") == 1
    assert effective_reserve_pool_size(layered, tuned, "carol") == 5
    assert effective_reserve_pool_size(layered, tuned, "alice") == 6

    assert effective_min_pool_size(layered, plain) == 2
    assert effective_min_pool_size(layered, tuned, "alice") == 3

    assert effective_max_db_connections(layered, plain) == 50
    assert effective_max_db_connections(layered, tuned) == 30

    assert effective_max_user_connections(layered, "carol") == 60
    assert effective_max_user_connections(layered, "alice") == 8
    assert effective_max_user_connections(layered, "bob") == 9

    assert effective_query_timeout(layered, "carol") == 1.0
    assert effective_query_timeout(layered, "alice") == 10.0
    assert effective_query_wait_timeout(layered, "carol") == 2.0
    assert effective_query_wait_timeout(layered, "alice") == 20.0
    assert effective_idle_transaction_timeout(layered, "bob") == 3.0
    assert effective_idle_transaction_timeout(layered, "alice") == 30.0
    assert effective_client_idle_timeout(layered, "bob") == 4.0
    assert effective_client_idle_timeout(layered, "alice") == 40.0


def test_zero_at_a_lower_level_still_overrides(tmp_path: Path) -> None:
    config = load_config(
        ini(tmp_path, "query_timeout = 5", databases="d = pool_size=0", users="u = query_timeout=0"), {}
    )
    assert effective_query_timeout(config, "u") == 0.0
    assert effective_pool_size(config, config.databases["d"], "u") == 0


def test_find_database(tmp_path: Path) -> None:
    no_fallback = load_config(ini(tmp_path, databases="app = host=h dbname=real"), {})
    assert find_database(no_fallback, "app") == no_fallback.databases["app"]
    assert find_database(no_fallback, "other") is None
    assert find_database(no_fallback, "APP") is None  # names are case-sensitive

    with_fallback = load_config(ini(tmp_path, databases="app = host=h\n* = host=fb port=7000 pool_size=3"), {})
    assert find_database(with_fallback, "app") == with_fallback.databases["app"]
    assert find_database(with_fallback, "shop") == DatabaseConfig(
        name="shop", host="fb", port=7000, dbname="shop", pool_size=3
    )
    assert find_database(with_fallback, "pgbouncer") is None  # the admin console is routed elsewhere

    forced = load_config(ini(tmp_path, databases="* = host=h dbname=appdb"), {})
    found = find_database(forced, "anything")
    assert found is not None
    assert (found.name, found.dbname) == ("anything", "appdb")  # a * entry with dbname forces it
    by_url = find_database(load_config(None, {"DATABASE_URL": "postgresql://u:p@h/appdb"}), "anything")
    assert by_url is not None and (by_url.name, by_url.dbname) == ("anything", "anything")
