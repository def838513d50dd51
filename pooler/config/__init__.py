"""Configuration: PgBouncer's setting names, meanings and defaults (except ``pool_mode``).

Why PgBouncer's names: users arrive with a ``pgbouncer.ini`` and muscle memory. Every setting keeps
PgBouncer's name and unit (seconds for times) so their file works as is, and ``POOLER_<SETTING>``
environment variables override any of them so a docker-compose file needs no config file at all.
docs/settings.md is the user-facing reference.

The package, one owner per fact, each module importing only the ones listed before it:

- ``vocabulary``: the words settings take (pool modes, sslmodes, TLS protocol ranges and suites) and their
  parsers, shared by the loader that refuses other words and the runtime that acts on them;
- ``schema``: the settings' table (``Settings`` and the [databases]/[users] entries, with their defaults),
  the immutable ``Config`` snapshot, the PgBouncer settings read but ignored, ``ConfigError``;
- ``converters``: one converter per setting and per entry key, so "what is valid" is said once;
- ``syntax``: libpq ``key=value`` strings, quoted names and ``postgresql://`` URLs, split into text;
- ``loader``: defaults < file < environment into one ``Config``; ``replace_settings``; ``read_userlist``;
- ``effective``: which value applies to a pool (user > database > global, PgBouncer's precedence).

Callers import from ``pooler.config``: this face re-exports what the rest of the pooler uses (the snapshot,
its loading, the precedence helpers), so where a fact lives inside the package is the package's business
and moving it does not touch the callers.
"""

from pooler.config.effective import (
    effective_client_idle_timeout,
    effective_idle_transaction_timeout,
    effective_max_db_client_connections,
    effective_max_db_connections,
    effective_max_user_client_connections,
    effective_max_user_connections,
    effective_min_pool_size,
    effective_pool_mode,
    effective_pool_size,
    effective_query_timeout,
    effective_query_wait_timeout,
    effective_reserve_pool_size,
    effective_server_lifetime,
    effective_transaction_timeout,
    find_database,
)
from pooler.config.loader import load_config, read_userlist, replace_settings
from pooler.config.schema import (
    ADMIN_DATABASE,
    ENVIRONMENT_SOURCE,
    OVERRIDE_SOURCE,
    PGBOUNCER_IGNORED_SETTINGS,
    PGBOUNCER_UNSUPPORTED_SETTINGS,
    RESTART_ONLY_SETTINGS,
    Config,
    ConfigError,
    DatabaseConfig,
    Settings,
    UserConfig,
    UserlistEntry,
)
from pooler.config.vocabulary import SSLMODES, TLS13_SUITES, PoolMode, parse_protocols, parse_tls13_ciphers

__all__ = [
    "ADMIN_DATABASE",
    "ENVIRONMENT_SOURCE",
    "OVERRIDE_SOURCE",
    "PGBOUNCER_IGNORED_SETTINGS",
    "PGBOUNCER_UNSUPPORTED_SETTINGS",
    "RESTART_ONLY_SETTINGS",
    "SSLMODES",
    "TLS13_SUITES",
    "Config",
    "ConfigError",
    "DatabaseConfig",
    "PoolMode",
    "Settings",
    "UserConfig",
    "UserlistEntry",
    "effective_client_idle_timeout",
    "effective_idle_transaction_timeout",
    "effective_max_db_client_connections",
    "effective_max_db_connections",
    "effective_max_user_client_connections",
    "effective_max_user_connections",
    "effective_min_pool_size",
    "effective_pool_mode",
    "effective_pool_size",
    "effective_query_timeout",
    "effective_query_wait_timeout",
    "effective_reserve_pool_size",
    "effective_server_lifetime",
    "effective_transaction_timeout",
    "find_database",
    "load_config",
    "parse_protocols",
    "parse_tls13_ciphers",
    "read_userlist",
    "replace_settings",
]
