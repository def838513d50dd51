"""Effective values: which setting applies to this pool, with PgBouncer's precedence.

Why one module: a [users] entry beats a [databases] entry beats the [pgbouncer] section, and a value set
to 0 at a lower level still overrides (PgBouncer's rule). Written once here, every caller (the pool's
sizes, the janitor's timeouts, the client limits, SHOW DATABASES) agrees. These run per client login;
they are dict lookups, nothing more.
"""

from __future__ import annotations

import dataclasses
import typing

from pooler.config.schema import ADMIN_DATABASE, Config, DatabaseConfig
from pooler.config.vocabulary import PoolMode


def find_database(config: Config, name: str) -> DatabaseConfig | None:
    """The [databases] entry for a client's database name, else the ``*`` fallback made concrete for it.

    Returns None for the admin console's name, ``pgbouncer``: callers route that before asking here, and a
    None makes a forgotten check fail closed instead of forwarding the admin database upstream.
    """
    if name == ADMIN_DATABASE:
        return None
    db = config.databases.get(name)
    if db is not None:
        return db
    fallback = config.databases.get("*")
    if fallback is None:
        return None
    return dataclasses.replace(fallback, name=name, dbname=fallback.dbname or name)


def _db_or_global(config: Config, db: DatabaseConfig, name: str, global_name: str = "") -> typing.Any:
    """A [databases] entry's value for ``name`` if it sets one, else the [pgbouncer] section's
    (``global_name`` where PgBouncer names the global differently, as ``default_pool_size``)."""
    value = getattr(db, name)
    return value if value is not None else getattr(config.settings, global_name or name)


def _user_or_global(config: Config, user: str, name: str) -> typing.Any:
    """A [users] entry's value for ``name`` if it sets one, else the [pgbouncer] section's."""
    entry = config.users.get(user)
    value = getattr(entry, name) if entry is not None else None
    return value if value is not None else getattr(config.settings, name)


def _user_db_or_global(config: Config, db: DatabaseConfig, user: str, name: str, global_name: str = "") -> typing.Any:
    """The whole precedence: the [users] entry's value, else the [databases] entry's, else the global."""
    entry = config.users.get(user)
    value = getattr(entry, name) if entry is not None else None
    return value if value is not None else _db_or_global(config, db, name, global_name)


def effective_pool_mode(config: Config, db: DatabaseConfig, user: str) -> PoolMode:
    return PoolMode(_user_db_or_global(config, db, user, "pool_mode"))


def effective_pool_size(config: Config, db: DatabaseConfig, user: str) -> int:
    return int(_user_db_or_global(config, db, user, "pool_size", "default_pool_size"))


def effective_reserve_pool_size(config: Config, db: DatabaseConfig, user: str) -> int:
    return int(_user_db_or_global(config, db, user, "reserve_pool_size"))


def effective_min_pool_size(config: Config, db: DatabaseConfig, user: str | None = None) -> int:
    """``user`` is accepted for symmetry with the other pool-size helpers; PgBouncer has no per-user value."""
    return int(_db_or_global(config, db, "min_pool_size"))


def effective_max_db_connections(config: Config, db: DatabaseConfig) -> int:
    return int(_db_or_global(config, db, "max_db_connections"))


def effective_max_db_client_connections(config: Config, db: DatabaseConfig) -> int:
    return int(_db_or_global(config, db, "max_db_client_connections"))


def effective_server_lifetime(config: Config, db: DatabaseConfig) -> float:
    return float(_db_or_global(config, db, "server_lifetime"))


def effective_max_user_connections(config: Config, user: str) -> int:
    return int(_user_or_global(config, user, "max_user_connections"))


def effective_max_user_client_connections(config: Config, user: str) -> int:
    return int(_user_or_global(config, user, "max_user_client_connections"))


def effective_query_timeout(config: Config, user: str) -> float:
    return float(_user_or_global(config, user, "query_timeout"))


def effective_query_wait_timeout(config: Config, user: str) -> float:
    return float(_user_or_global(config, user, "query_wait_timeout"))


def effective_idle_transaction_timeout(config: Config, user: str) -> float:
    return float(_user_or_global(config, user, "idle_transaction_timeout"))


def effective_transaction_timeout(config: Config, user: str) -> float:
    return float(_user_or_global(config, user, "transaction_timeout"))


def effective_client_idle_timeout(config: Config, user: str) -> float:
    return float(_user_or_global(config, user, "client_idle_timeout"))
