"""Configuration: PgBouncer's setting names, meanings and defaults (except ``pool_mode``).

Why PgBouncer's names: users arrive with a ``pgbouncer.ini`` and muscle memory. Every setting keeps
PgBouncer's name and unit (seconds for times) so their file works as is, and ``POOLER_<SETTING>``
environment variables override any of them so a docker-compose file needs no config file at all.

The objects here are immutable snapshots: a reload builds a new ``Config`` and swaps it in whole, so
code on the data path never sees a half-applied change.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class PoolMode(enum.StrEnum):
    """When a backend goes back to the pool."""

    SESSION = "session"
    TRANSACTION = "transaction"
    STATEMENT = "statement"


class AuthType(enum.StrEnum):
    """How clients prove who they are to the pooler (PgBouncer's ``auth_type``)."""

    TRUST = "trust"
    PLAIN = "plain"
    MD5 = "md5"
    SCRAM_SHA_256 = "scram-sha-256"


class ConfigError(Exception):
    """A config that cannot be used; ``str()`` is one line naming the file, the setting and the fault."""

    def __init__(self, source: str, setting: str, problem: str) -> None:
        super().__init__(f"{source}: {setting}: {problem}")
        self.source = source
        self.setting = setting
        self.problem = problem


@dataclass(frozen=True, slots=True)
class DatabaseConfig:
    """One ``[databases]`` entry: where a client-visible database name really lives.

    ``None`` means "not set here": the global setting applies.
    """

    name: str
    host: str | None = None  # None: the default unix socket dir; a value starting with "/" is a socket dir
    port: int = 5432
    dbname: str | None = None  # upstream database name; None: same as ``name`` (or the client's, for "*")
    user: str | None = None  # forces every client of this database onto one upstream user (one pool)
    password: str | None = None
    auth_user: str | None = None
    pool_size: int | None = None
    min_pool_size: int | None = None
    reserve_pool_size: int | None = None
    max_db_connections: int | None = None
    pool_mode: PoolMode | None = None
    connect_query: str | None = None
    client_encoding: str | None = None
    datestyle: str | None = None
    timezone: str | None = None


@dataclass(frozen=True, slots=True)
class UserConfig:
    """One ``[users]`` entry: per-user overrides."""

    name: str
    pool_mode: PoolMode | None = None
    pool_size: int | None = None
    reserve_pool_size: int | None = None
    max_user_connections: int | None = None
    query_timeout: float | None = None
    query_wait_timeout: float | None = None
    idle_transaction_timeout: float | None = None
    client_idle_timeout: float | None = None


@dataclass(frozen=True, slots=True)
class Settings:
    """The ``[pgbouncer]`` section. Times are seconds (floats); 0 disables a timeout or limit."""

    # Where to listen
    listen_addr: str = "127.0.0.1"
    listen_port: int = 6432
    direct_port: int = 0  # ours: the unpooled endpoint; 0 = off
    unix_socket_dir: str = ""
    listen_backlog: int = 128
    so_reuseport: bool = False
    workers: int = 1

    # Pooling
    pool_mode: PoolMode = PoolMode.TRANSACTION
    max_client_conn: int = 100
    default_pool_size: int = 20
    min_pool_size: int = 0
    reserve_pool_size: int = 0
    reserve_pool_timeout: float = 5.0
    max_db_connections: int = 0
    max_user_connections: int = 0
    server_round_robin: bool = False
    server_reset_query: str = "DISCARD ALL"
    server_reset_query_always: bool = False
    server_check_query: str = "select 1"
    server_check_delay: float = 30.0
    max_prepared_statements: int = 200
    track_extra_parameters: tuple[str, ...] = ("IntervalStyle",)
    ignore_startup_parameters: tuple[str, ...] = ()

    # Authentication
    auth_type: AuthType = AuthType.MD5
    auth_file: str = ""
    auth_user: str = ""
    auth_query: str = "SELECT usename, passwd FROM pg_shadow WHERE usename=$1"
    auth_cache_ttl: float = 60.0  # ours: how long an auth_query answer is trusted
    admin_users: tuple[str, ...] = ()
    stats_users: tuple[str, ...] = ()

    # Timeouts
    server_lifetime: float = 3600.0
    server_idle_timeout: float = 600.0
    server_connect_timeout: float = 15.0
    server_login_retry: float = 15.0
    query_timeout: float = 0.0
    query_wait_timeout: float = 120.0
    cancel_wait_timeout: float = 10.0
    client_idle_timeout: float = 0.0
    client_login_timeout: float = 60.0
    idle_transaction_timeout: float = 0.0

    # Low level
    pkt_buf: int = 4096
    max_packet_size: int = 2147483647
    sbuf_loopcnt: int = 5
    tcp_keepalive: bool = True

    # Logging and metrics
    log_connections: bool = True
    log_disconnections: bool = True
    log_pooler_errors: bool = True
    log_stats: bool = True
    stats_period: float = 60.0
    verbose: int = 0
    log_format: str = "auto"  # ours: auto | json | console
    logfile: str = ""
    pidfile: str = ""
    metrics_port: int = 0  # ours: Prometheus listener; 0 = off
    session_state_check: str = "warn"  # ours: warn | error | off


@dataclass(frozen=True, slots=True)
class UserlistEntry:
    """A line of an ``auth_file``: a user name and a secret (plain, ``md5…`` or ``SCRAM-SHA-256$…``)."""

    user: str
    secret: str


@dataclass(frozen=True, slots=True)
class Config:
    """Everything the pooler runs on: one immutable snapshot, swapped whole on reload."""

    settings: Settings = field(default_factory=Settings)
    databases: dict[str, DatabaseConfig] = field(default_factory=dict)
    users: dict[str, UserConfig] = field(default_factory=dict)
    # Secrets known without an auth_file: a DATABASE_URL's user, or `pooler up`'s generated role.
    extra_userlist: tuple[UserlistEntry, ...] = ()
    source: str = "<defaults>"
    ignored: tuple[str, ...] = ()  # PgBouncer settings we read but do not support yet (logged at start)
