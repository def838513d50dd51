"""What a config is: the settings' table with PgBouncer's names and defaults, and the snapshot it makes.

Why PgBouncer's names: users arrive with a ``pgbouncer.ini`` and muscle memory. Every setting keeps
PgBouncer's name and unit (seconds for times) so their file works as is. A field of ``Settings`` is the
one place a setting is declared: its name, its type (which picks its converter, pooler.config.converters)
and its default; ``PGBOUNCER_IGNORED_SETTINGS`` names the PgBouncer settings read but not acted on, with
why. docs/settings.md is the user-facing reference and a test holds it to this module.

The objects here are immutable snapshots: a reload builds a new ``Config`` and swaps it in whole, so code
on the data path never sees a half-applied change. Nothing here reads a file or the environment
(pooler.config.loader does): the snapshot is all the data path ever reads.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pooler.config.vocabulary import PoolMode
from pooler.wire.auth import AuthType

#: Settings that only take effect at start: a RELOAD or SET keeps the running value (and says so).
RESTART_ONLY_SETTINGS = frozenset({
    "listen_addr", "listen_port", "direct_port", "http_port", "unix_socket_dir", "listen_backlog", "so_reuseport",
    "workers", "metrics_port", "pidfile",
})  # fmt: skip


#: The name clients use to reach the admin console; never a real database.
ADMIN_DATABASE = "pgbouncer"

#: Where errors about environment variables and ``replace_settings`` keywords say they came from.
ENVIRONMENT_SOURCE = "environment"
OVERRIDE_SOURCE = "override"


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
    max_db_client_connections: int | None = None
    pool_mode: PoolMode | None = None
    server_lifetime: float | None = None
    auth_dbname: str | None = None
    load_balance_hosts: str | None = None  # round-robin | disable, for a host list (host=a,b)
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
    max_user_client_connections: int | None = None
    query_timeout: float | None = None
    query_wait_timeout: float | None = None
    idle_transaction_timeout: float | None = None
    transaction_timeout: float | None = None
    client_idle_timeout: float | None = None


@dataclass(frozen=True, slots=True)
class Settings:
    """The ``[pgbouncer]`` section. Times are seconds (floats); 0 disables a timeout or limit."""

    # Where to listen
    listen_addr: str = "127.0.0.1"
    listen_port: int = 6432
    direct_port: int = 0  # ours: the unpooled endpoint; 0 = off
    http_port: int = 0  # ours: a port for SQL over HTTP and WebSocket only (the pooled port serves them too)
    unix_socket_dir: str = ""
    unix_socket_mode: str = "0777"  # octal, as PgBouncer writes it
    unix_socket_group: str = ""
    listen_backlog: int = 128
    so_reuseport: bool = False
    workers: int = 1

    # Pooling
    pool_mode: PoolMode = PoolMode.TRANSACTION
    max_client_conn: int = 100
    max_db_client_connections: int = 0
    max_user_client_connections: int = 0
    default_pool_size: int = 20
    min_pool_size: int = 0
    reserve_pool_size: int = 0
    reserve_pool_timeout: float = 5.0
    max_db_connections: int = 0
    max_user_connections: int = 0
    server_round_robin: bool = False
    server_reset_query: str = "DISCARD ALL"
    server_reset_query_always: bool = False
    server_check_query: str = "<empty>"  # PgBouncer's default: an empty query; "" = no checks
    server_check_delay: float = 30.0
    server_fast_close: bool = False
    load_balance_hosts: str = "round-robin"
    application_name_add_host: bool = False
    max_prepared_statements: int = 200
    track_extra_parameters: tuple[str, ...] = ("IntervalStyle",)
    ignore_startup_parameters: tuple[str, ...] = ()

    # Authentication
    auth_type: AuthType = AuthType.MD5
    auth_file: str = ""
    auth_user: str = ""
    auth_query: str = "SELECT usename, passwd FROM pg_shadow WHERE usename=$1"
    auth_dbname: str = ""
    scram_iterations: int = 4096
    auth_cache_ttl: float = 60.0  # ours: how long an auth_query answer is trusted
    admin_users: tuple[str, ...] = ()
    stats_users: tuple[str, ...] = ()

    # Timeouts
    server_lifetime: float = 3600.0
    server_idle_timeout: float = 600.0
    server_connect_timeout: float = 15.0
    server_login_retry: float = 15.0
    autodb_idle_timeout: float = 3600.0
    query_timeout: float = 0.0
    query_wait_timeout: float = 120.0
    cancel_wait_timeout: float = 10.0
    client_idle_timeout: float = 0.0
    client_login_timeout: float = 60.0
    idle_transaction_timeout: float = 0.0
    transaction_timeout: float = 0.0
    query_wait_notify: float = 5.0

    # Low level
    max_packet_size: int = 2147483647
    tcp_keepalive: bool = True
    tcp_keepidle: int = 0  # seconds; 0 = the OS default
    tcp_keepintvl: int = 0
    tcp_keepcnt: int = 0
    tcp_user_timeout: int = 0  # milliseconds (Linux); 0 = the OS default
    http_max_header_size: int = 16384  # ours: request line + headers of an HTTP request (431 beyond)
    http_max_body_size: int = 10485760  # ours: body of POST /sql (413 beyond), Neon's 10 MiB
    http_max_response_size: int = 10485760  # ours: rows of one /sql answer (507 beyond), Neon's 10 MiB
    websocket_max_frame_size: int = 16777216  # ours: one WebSocket frame's payload (close 1009 beyond)

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
    metrics_port: int = 9127  # ours: Prometheus /metrics, /healthz, /readyz (pgbouncer_exporter's port); 0 = off
    session_state_check: str = "warn"  # ours: warn | error | off

    # TLS (pooler.runtime.tls): towards clients, and towards Postgres
    client_tls_sslmode: str = "disable"
    client_tls_key_file: str = ""
    client_tls_cert_file: str = ""
    client_tls_ca_file: str = ""
    client_tls_protocols: str = "secure"
    client_tls_ciphers: str = "default"
    client_tls13_ciphers: str = ""
    server_tls_sslmode: str = "prefer"
    server_tls_ca_file: str = ""
    server_tls_key_file: str = ""
    server_tls_cert_file: str = ""
    server_tls_protocols: str = "secure"
    server_tls_ciphers: str = "default"
    server_tls13_ciphers: str = ""


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
    # Notes for the start-up log: PgBouncer settings read but not supported yet, near-miss POOLER_* variables,
    # DATABASE_URL parameters we do not use.
    ignored: tuple[str, ...] = ()


_TLS_WHY = "OpenSSL's defaults apply: they negotiate X25519 or P-256, and no finite-field DH"
_DNS_WHY = "the OS resolver answers at each connect: there is no DNS cache to tune"
_SYSLOG_WHY = "the log goes to stderr and logfile; route it to syslog with the service manager (journald)"
_WINDOWS_WHY = "the name of PgBouncer's Windows service; pooler is not a Windows service"

#: PgBouncer 1.18-1.25 ``[pgbouncer]`` settings that pooler reads but does not act on, with why. A real
#: pgbouncer.ini carries many of them; refusing to start over ``client_tls_sslmode = disable`` would
#: make "bring your pgbouncer.ini" a lie, so they are recorded in ``Config.ignored`` and logged, and the
#: admin console's SET accepts them with a NOTICE saying so. docs/settings.md lists them with these reasons.
PGBOUNCER_IGNORED_SETTINGS: dict[str, str] = {
    "auth_hba_file": "auth_type = hba is not supported",
    "auth_ident_file": "auth_type = hba (peer ident maps) is not supported",
    "auth_ldap_options": "auth_type = ldap is not supported",
    "client_tls_dheparams": _TLS_WHY,
    "client_tls_ecdhcurve": _TLS_WHY,
    "conffile": "read-only in PgBouncer too: the config file is the one given on the command line",
    "disable_pqexec": "not implemented: multi-statement simple queries are forwarded to Postgres as sent",
    "dns_max_ttl": _DNS_WHY,
    "dns_nxdomain_ttl": _DNS_WHY,
    "dns_zone_check_period": _DNS_WHY,
    "resolv_conf": _DNS_WHY,
    "job_name": _WINDOWS_WHY,
    "service_name": _WINDOWS_WHY,
    "peer_id": "[peers] is not supported; with workers > 1 the pooler relays cancels between its own processes",
    "suspend_timeout": "SUSPEND and online restart (takeover) are not supported",
    "syslog": _SYSLOG_WHY,
    "syslog_facility": _SYSLOG_WHY,
    "syslog_ident": _SYSLOG_WHY,
    "tcp_defer_accept": "not implemented: an accepted connection costs one small object until client_login_timeout",
    "tcp_socket_buffer": "the kernel's socket buffer autotuning is used",
    "user": "drop privileges with the service manager (User= in systemd, USER in a Dockerfile)",
    "pkt_buf": "PgBouncer's fixed per-connection buffer: here buffers are the event loop's, bounded by flow "
               "control (reading pauses past the write-buffer high-water marks and HOLD_LIMIT)",
    "sbuf_loopcnt": "PgBouncer's per-connection fairness limit for its event loop: asyncio already handles one "
                    "read per ready connection per turn",
}
PGBOUNCER_UNSUPPORTED_SETTINGS: frozenset[str] = frozenset(PGBOUNCER_IGNORED_SETTINGS)
