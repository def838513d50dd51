"""Configuration: PgBouncer's setting names, meanings and defaults (except ``pool_mode``).

Why PgBouncer's names: users arrive with a ``pgbouncer.ini`` and muscle memory. Every setting keeps
PgBouncer's name and unit (seconds for times) so their file works as is, and ``POOLER_<SETTING>``
environment variables override any of them so a docker-compose file needs no config file at all.

The objects here are immutable snapshots: a reload builds a new ``Config`` and swaps it in whole, so
code on the data path never sees a half-applied change.

``load_config`` layers defaults < file (pgbouncer.ini or pooler.toml) < environment, validating every value
once, at load; the ``effective_*`` helpers answer "which value applies to this pool" with PgBouncer's
precedence (user > database > global) so every caller agrees. docs/settings.md is the user-facing reference.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import math
import os
import re
import ssl
import tomllib
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from urllib.parse import unquote

from pooler.wire.auth import AuthType


class PoolMode(enum.StrEnum):
    """When a backend goes back to the pool."""

    SESSION = "session"
    TRANSACTION = "transaction"
    STATEMENT = "statement"


#: Settings that only take effect at start: a RELOAD or SET keeps the running value (and says so).
RESTART_ONLY_SETTINGS = frozenset({
    "listen_addr", "listen_port", "direct_port", "http_port", "unix_socket_dir", "listen_backlog", "so_reuseport",
    "workers", "metrics_port", "pidfile",
})  # fmt: skip


# --- TLS settings' vocabulary (runtime.tls builds the contexts from them) -------------------------

#: PgBouncer's sslmode names, weakest first.
SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
_VERSIONS = {
    "tlsv1.0": ssl.TLSVersion.TLSv1,
    "tlsv1.1": ssl.TLSVersion.TLSv1_1,
    "tlsv1.2": ssl.TLSVersion.TLSv1_2,
    "tlsv1.3": ssl.TLSVersion.TLSv1_3,
}
_VERSION_SHORTCUTS = {
    "all": tuple(_VERSIONS),
    "legacy": tuple(_VERSIONS),
    "secure": ("tlsv1.2", "tlsv1.3"),
}
#: The TLS 1.3 suites PgBouncer accepts in ``*_tls13_ciphers``.
TLS13_SUITES = frozenset({
    "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256", "TLS_AES_128_GCM_SHA256",
    "TLS_AES_128_CCM_8_SHA256", "TLS_AES_128_CCM_SHA256",
})  # fmt: skip


def parse_protocols(value: str) -> tuple[ssl.TLSVersion, ssl.TLSVersion]:
    """``client_tls_protocols`` / ``server_tls_protocols`` as the (minimum, maximum) version.

    OpenSSL takes a range, not a set, so ``tlsv1.0,tlsv1.2`` allows 1.1 too (the same as PgBouncer,
    which also builds on OpenSSL's range). Raises ValueError naming the allowed values.
    """
    names: list[str] = []
    for item in value.replace(" ", ",").split(","):
        name = item.strip().lower()
        if not name:
            continue
        if name in _VERSION_SHORTCUTS:
            names.extend(_VERSION_SHORTCUTS[name])
        elif name in _VERSIONS:
            names.append(name)
        else:
            raise ValueError(f"unknown TLS protocol {item.strip()!r}; allowed: tlsv1.0, tlsv1.1, tlsv1.2, "
                             "tlsv1.3, all, secure, legacy")
    if not names:
        raise ValueError("no TLS protocol given; use e.g. secure (tlsv1.2,tlsv1.3)")
    versions = sorted(_VERSIONS[n] for n in names)
    return versions[0], versions[-1]


def parse_tls13_ciphers(value: str) -> tuple[str, ...]:
    """``*_tls13_ciphers``: a ``:``- or ``,``-separated list of TLS 1.3 suite names; ValueError otherwise."""
    suites = tuple(s.strip() for s in value.replace(",", ":").split(":") if s.strip())
    unknown = [s for s in suites if s not in TLS13_SUITES]
    if unknown:
        raise ValueError(f"unknown TLS 1.3 cipher suite {unknown[0]!r}; allowed: {', '.join(sorted(TLS13_SUITES))}")
    return suites


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


# ==================================================================================================
# Loading
#
# Every value, whatever its origin (an ini string, a TOML native, an environment string, a keyword to
# ``replace_settings``), goes through the same converter for its setting, so "what is valid" is
# defined once. Converters raise ``_BadValueError`` with only the fault; the caller knows which file and
# setting to blame and turns it into a ``ConfigError``.
# ==================================================================================================

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

#: The name clients use to reach the admin console; never a real database.
ADMIN_DATABASE = "pgbouncer"

#: Where errors about environment variables and ``replace_settings`` keywords say they came from.
ENVIRONMENT_SOURCE = "environment"
OVERRIDE_SOURCE = "override"

_ENV_PREFIX = "POOLER_"
_MAX_PACKET_SIZE_LIMIT = 2_147_483_647
_PORT_MAX = 65535

_INT_RE = re.compile(r"[+-]?\d+")
_DURATION_RE = re.compile(r"([+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)\s*(ms|s|sec|min|h|d)?", re.IGNORECASE)
_DURATION_UNITS = {None: 1.0, "ms": 0.001, "s": 1.0, "sec": 1.0, "min": 60.0, "h": 3600.0, "d": 86400.0}
_BOOLEANS = {
    "1": True, "yes": True, "true": True, "on": True,
    "0": False, "no": False, "false": False, "off": False,
}  # fmt: skip

_SUPPORTED_AUTH_TYPES = ", ".join(a.value for a in AuthType)
_PGBOUNCER_ONLY_AUTH_TYPES = frozenset({"hba", "cert", "pam", "ldap"})


class _BadValueError(Exception):
    """A value's fault, raised before the caller knows which file and setting to blame."""


_Converter = Callable[[object], object]
_D = typing.TypeVar("_D", Settings, DatabaseConfig, UserConfig)


def _with(obj: _D, changes: Mapping[str, object]) -> _D:
    """``dataclasses.replace`` for values the converters already validated: mypy cannot see that a
    converter's ``object`` result fits the field it fills, so that check is the converters' job."""
    loose: dict[str, typing.Any] = dict(changes)
    return dataclasses.replace(obj, **loose)


def _parse_int(raw: object) -> int:
    if isinstance(raw, int) and not isinstance(raw, bool):
        return raw
    if isinstance(raw, str) and _INT_RE.fullmatch(raw.strip()):
        return int(raw.strip())
    raise _BadValueError(f"expected a whole number, got {raw!r}")


def _int_converter(low: int = 0, high: int | None = None, *, port: bool = False) -> Callable[[object], int]:
    """Build a whole-number converter; the bound is part of the setting's meaning, so it lives here."""

    def convert(raw: object) -> int:
        value = _parse_int(raw)
        if low <= value and (high is None or value <= high):
            return value
        if port:
            raise _BadValueError(f"expected a port number {low}..{high}, got {raw!r}")
        if low == 0 and value < 0:
            raise _BadValueError(f"must not be negative, got {raw!r}")
        if value < low:
            raise _BadValueError(f"must be at least {low}, got {raw!r}")
        raise _BadValueError(f"must be at most {high}, got {raw!r}")

    return convert


def _to_seconds(raw: object) -> float:
    """Plain numbers are seconds, as in PgBouncer; units are accepted because ``500ms`` reads better."""
    value: float | None = None
    if isinstance(raw, int | float) and not isinstance(raw, bool):
        value = float(raw)
    elif isinstance(raw, str):
        match = _DURATION_RE.fullmatch(raw.strip())
        if match:
            unit = match.group(2).lower() if match.group(2) else None
            value = float(match.group(1)) * _DURATION_UNITS[unit]
    if value is None or not math.isfinite(value):
        raise _BadValueError(f"expected a duration in seconds (e.g. 30, 1.5, 500ms, 15s, 2min, 1h, 1d), got {raw!r}")
    if value < 0:
        raise _BadValueError(f"must not be negative, got {raw!r}")
    return value


def _to_bool(raw: object) -> bool:
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, int) and raw in (0, 1):
        return bool(raw)
    if isinstance(raw, str) and raw.strip().lower() in _BOOLEANS:
        return _BOOLEANS[raw.strip().lower()]
    raise _BadValueError(f"expected a boolean (1/0, yes/no, true/false, on/off), got {raw!r}")


def _to_str(raw: object) -> str:
    if isinstance(raw, str):
        return raw
    raise _BadValueError(f"expected a string, got {raw!r}")


def _to_names(raw: object) -> tuple[str, ...]:
    """PgBouncer lists are comma-separated strings; TOML users will naturally write arrays, so take both."""
    if isinstance(raw, str):
        items: list[object] = list(raw.split(","))
    elif isinstance(raw, list | tuple):
        items = list(raw)
    else:
        raise _BadValueError(f"expected a comma-separated list of names, got {raw!r}")
    names: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise _BadValueError(f"expected a comma-separated list of names, got {raw!r}")
        if item.strip():
            names.append(item.strip())
    return tuple(names)


def _to_pool_mode(raw: object) -> PoolMode:
    if isinstance(raw, str):
        try:
            return PoolMode(raw.strip().lower())
        except ValueError:
            pass
    choices = ", ".join(m.value for m in PoolMode)
    raise _BadValueError(f"expected one of {choices}, got {raw!r}")


def _to_auth_type(raw: object) -> AuthType:
    """PgBouncer's names; ``hba``, ``cert``, ``pam`` and ``ldap`` are refused with the supported list."""
    if isinstance(raw, str):
        text = raw.strip().lower()
        try:
            return AuthType(text)
        except ValueError:
            if text in _PGBOUNCER_ONLY_AUTH_TYPES:
                raise _BadValueError(
                    f"{raw!r} is not supported; supported: {_SUPPORTED_AUTH_TYPES}"
                ) from None
    raise _BadValueError(f"expected one of {_SUPPORTED_AUTH_TYPES}, got {raw!r}")


def _to_file_mode(raw: object) -> str:
    """``unix_socket_mode``: an octal permission mode such as 0777 or 0770 (PgBouncer's spelling kept)."""
    text = str(raw).strip() if isinstance(raw, str | int) and not isinstance(raw, bool) else ""
    if text and all(c in "01234567" for c in text) and int(text, 8) <= 0o777:
        return text
    raise _BadValueError(f"expected an octal file mode such as 0777 or 0770, got {raw!r}")


def _choice_converter(*choices: str) -> Callable[[object], str]:
    def convert(raw: object) -> str:
        if isinstance(raw, str) and raw.strip().lower() in choices:
            return raw.strip().lower()
        raise _BadValueError(f"expected one of {', '.join(choices)}, got {raw!r}")

    return convert




def _checked_by(parse: Callable[[str], object]) -> _Converter:
    """A text setting kept as written, once ``parse`` (which raises ValueError naming the fault) accepts it."""

    def convert(raw: object) -> str:
        text = _to_str(raw)
        try:
            parse(text)
        except ValueError as exc:
            raise _BadValueError(str(exc)) from None
        return text

    return convert


def _build_setting_converters() -> dict[str, _Converter]:
    """Derive each setting's converter from ``Settings``' annotations once, so a new field is loadable
    (and overridable from the environment) the moment it is declared."""
    special: dict[str, _Converter] = {
        "listen_port": _int_converter(1, _PORT_MAX, port=True),
        "direct_port": _int_converter(0, _PORT_MAX, port=True),
        "metrics_port": _int_converter(0, _PORT_MAX, port=True),
        "http_port": _int_converter(0, _PORT_MAX, port=True),
        "http_max_header_size": _int_converter(1024),
        "http_max_body_size": _int_converter(1024),
        "http_max_response_size": _int_converter(1024),
        "websocket_max_frame_size": _int_converter(1024),
        "max_packet_size": _int_converter(1024, _MAX_PACKET_SIZE_LIMIT),
        "workers": _int_converter(1, 16),  # the cancel key has 4 bits for the worker (pooler.runtime.workers)
        "auth_type": _to_auth_type,
        "log_format": _choice_converter("auto", "json", "console"),
        "session_state_check": _choice_converter("warn", "error", "off"),
        "client_tls_sslmode": _choice_converter(*SSLMODES),
        "server_tls_sslmode": _choice_converter(*SSLMODES),
        "client_tls_protocols": _checked_by(parse_protocols),
        "server_tls_protocols": _checked_by(parse_protocols),
        "client_tls13_ciphers": _checked_by(parse_tls13_ciphers),
        "server_tls13_ciphers": _checked_by(parse_tls13_ciphers),
        "load_balance_hosts": _choice_converter("round-robin", "disable"),
        "unix_socket_mode": _to_file_mode,
        "scram_iterations": _int_converter(4096),
    }
    by_type: dict[object, _Converter] = {
        int: _int_converter(),
        float: _to_seconds,
        bool: _to_bool,
        str: _to_str,
        tuple[str, ...]: _to_names,
        PoolMode: _to_pool_mode,
        AuthType: _to_auth_type,
    }
    hints = typing.get_type_hints(Settings)
    converters: dict[str, _Converter] = {}
    for f in dataclasses.fields(Settings):
        converter = special.get(f.name) or by_type.get(hints[f.name])
        if converter is None:  # pragma: no cover - caught by the test suite the day a field is added
            raise TypeError(f"Settings.{f.name}: no converter for {hints[f.name]!r}")
        converters[f.name] = converter
    return converters


_SETTING_CONVERTERS: dict[str, _Converter] = _build_setting_converters()
_ALL_SETTING_NAMES: tuple[str, ...] = tuple(sorted(set(_SETTING_CONVERTERS) | PGBOUNCER_UNSUPPORTED_SETTINGS))

_NONNEGATIVE = _int_converter()

#: [databases] connection-string keys -> (DatabaseConfig field, converter). ``reserve_pool`` is
#: PgBouncer's historical spelling, ``reserve_pool_size`` its newer one.
_DATABASE_KEYS: dict[str, tuple[str, _Converter]] = {
    "host": ("host", _to_str),
    "port": ("port", _int_converter(1, _PORT_MAX, port=True)),
    "dbname": ("dbname", _to_str),
    "user": ("user", _to_str),
    "password": ("password", _to_str),
    "auth_user": ("auth_user", _to_str),
    "pool_size": ("pool_size", _NONNEGATIVE),
    "min_pool_size": ("min_pool_size", _NONNEGATIVE),
    "reserve_pool": ("reserve_pool_size", _NONNEGATIVE),
    "reserve_pool_size": ("reserve_pool_size", _NONNEGATIVE),
    "max_db_connections": ("max_db_connections", _NONNEGATIVE),
    "max_db_client_connections": ("max_db_client_connections", _NONNEGATIVE),
    "pool_mode": ("pool_mode", _to_pool_mode),
    "server_lifetime": ("server_lifetime", _to_seconds),
    "auth_dbname": ("auth_dbname", _to_str),
    "load_balance_hosts": ("load_balance_hosts", _choice_converter("round-robin", "disable")),
    "connect_query": ("connect_query", _to_str),
    "client_encoding": ("client_encoding", _to_str),
    "datestyle": ("datestyle", _to_str),
    "timezone": ("timezone", _to_str),
}
_DATABASE_KEYS_UNSUPPORTED = frozenset(
    {"auth_query", "application_name"}
)  # fmt: skip

#: [users] keys -> (UserConfig field, converter).
_USER_KEYS: dict[str, tuple[str, _Converter]] = {
    "pool_mode": ("pool_mode", _to_pool_mode),
    "pool_size": ("pool_size", _NONNEGATIVE),
    "reserve_pool": ("reserve_pool_size", _NONNEGATIVE),
    "reserve_pool_size": ("reserve_pool_size", _NONNEGATIVE),
    "max_user_connections": ("max_user_connections", _NONNEGATIVE),
    "max_user_client_connections": ("max_user_client_connections", _NONNEGATIVE),
    "query_timeout": ("query_timeout", _to_seconds),
    "query_wait_timeout": ("query_wait_timeout", _to_seconds),
    "idle_transaction_timeout": ("idle_transaction_timeout", _to_seconds),
    "transaction_timeout": ("transaction_timeout", _to_seconds),
    "client_idle_timeout": ("client_idle_timeout", _to_seconds),
}
_USER_KEYS_UNSUPPORTED: frozenset[str] = frozenset()

#: Settings naming files, resolved next to the config file when relative.
_FILE_SETTINGS = ("auth_file", "client_tls_key_file", "client_tls_cert_file", "client_tls_ca_file",
                  "server_tls_ca_file", "server_tls_key_file", "server_tls_cert_file")

_SETTINGS_SECTIONS = ("pgbouncer", "pooler")
_KNOWN_SECTIONS = (*_SETTINGS_SECTIONS, "databases", "users", "peers")


def _suggest(name: str, candidates: Iterable[str]) -> str:
    """A typo should cost one glance, not a trip to the docs."""
    match = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.75)
    return f"; did you mean {match[0]!r}?" if match else ""


class _Loader:
    """Accumulates one load: values by setting, entries, and the ignored-notes, in the order met."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.settings: dict[str, object] = {}
        self.databases: dict[str, DatabaseConfig] = {}
        self.users: dict[str, UserConfig] = {}
        self.ignored: list[str] = []
        self.seen_peers = False

    # -- [pgbouncer] ------------------------------------------------------------------------------

    def setting(self, name: str, raw: object, *, source: str | None = None, label: str | None = None) -> None:
        key = name.strip().lower()
        src = source or self.source
        shown = label or key
        converter = _SETTING_CONVERTERS.get(key)
        if converter is None:
            if key in PGBOUNCER_UNSUPPORTED_SETTINGS:
                self.ignored.append(f"{shown}: not supported yet, ignored")
                return
            raise ConfigError(src, shown, "unknown setting" + _suggest(key, _ALL_SETTING_NAMES))
        try:
            self.settings[key] = converter(raw)
        except _BadValueError as exc:
            raise ConfigError(src, shown, str(exc)) from None

    def resolve_auth_file(self, base_dir: str) -> None:
        """PgBouncer resolves a relative auth_file against its working directory, which for a service is
        arbitrary; next to the config file is what the author of ``auth_file = userlist.txt`` meant. The
        TLS key, certificate and CA files are read the same way."""
        for name in _FILE_SETTINGS:
            value = self.settings.get(name)
            if isinstance(value, str) and value:
                self.settings[name] = os.path.abspath(os.path.join(base_dir, os.path.expanduser(value)))

    # -- [databases] and [users] -----------------------------------------------------------------

    def _entry_fields(
        self,
        section: str,
        name: str,
        spec: object,
        keys: Mapping[str, tuple[str, _Converter]],
        unsupported: frozenset[str],
    ) -> dict[str, object]:
        where = f"{section}.{name}"
        pairs: list[tuple[str, object]]
        if isinstance(spec, str):
            try:
                pairs = list(_parse_connstring(spec))
            except _BadValueError as exc:
                raise ConfigError(self.source, where, f"connection string: {exc}") from None
        elif isinstance(spec, Mapping):
            pairs = [(str(k), v) for k, v in spec.items()]
        else:
            raise ConfigError(self.source, where, f"expected a connection string or a table, got {type(spec).__name__}")
        fields: dict[str, object] = {}
        for raw_key, raw in pairs:
            key = raw_key.strip().lower()
            spec_for_key = keys.get(key)
            if spec_for_key is None:
                if key in unsupported:
                    self.ignored.append(f"{where}.{key}: not supported yet, ignored")
                    continue
                candidates = [*keys, *unsupported]
                raise ConfigError(self.source, f"{where}.{key}", "unknown key" + _suggest(key, candidates))
            field_name, converter = spec_for_key
            try:
                fields[field_name] = converter(raw)
            except _BadValueError as exc:
                problem = "expected a string" if key == "password" else str(exc)  # never echo a password
                raise ConfigError(self.source, f"{where}.{key}", problem) from None
        return fields

    def database(self, name: str, spec: object) -> None:
        if not name:
            raise ConfigError(self.source, "databases", "empty database name")
        if name == ADMIN_DATABASE:
            raise ConfigError(
                self.source,
                f"databases.{name}",
                f"the name {ADMIN_DATABASE!r} is reserved for the admin console",
            )
        fields = self._entry_fields("databases", name, spec, _DATABASE_KEYS, _DATABASE_KEYS_UNSUPPORTED)
        self.databases[name] = _with(DatabaseConfig(name=name), fields)

    def user(self, name: str, spec: object) -> None:
        if not name:
            raise ConfigError(self.source, "users", "empty user name")
        fields = self._entry_fields("users", name, spec, _USER_KEYS, _USER_KEYS_UNSUPPORTED)
        self.users[name] = _with(UserConfig(name=name), fields)

    def peers(self) -> None:
        if not self.seen_peers:
            self.seen_peers = True
            self.ignored.append("[peers]: not supported yet, ignored")

    # -- sections ---------------------------------------------------------------------------------

    def unknown_section(self, section: str, label: str) -> ConfigError:
        return ConfigError(self.source, label, "unknown section" + _suggest(section, _KNOWN_SECTIONS))


def _parse_connstring(text: str) -> list[tuple[str, str]]:
    """Split a PgBouncer/libpq ``key=value ...`` string into pairs, in order (a repeated key: last wins).

    Values may be single-quoted to hold spaces; inside, ``''`` and ``\\'`` are a quote and ``\\\\`` a
    backslash. Errors never echo a value, because the value may be a password.
    """
    pairs: list[tuple[str, str]] = []
    i, n = 0, len(text)
    while True:
        while i < n and text[i].isspace():
            i += 1
        if i >= n:
            return pairs
        start = i
        while i < n and text[i] != "=" and not text[i].isspace():
            i += 1
        key = text[start:i]
        while i < n and text[i].isspace():
            i += 1
        if not key or i >= n or text[i] != "=":
            raise _BadValueError(f"expected key=value at {key or text[start : start + 1]!r}")
        i += 1
        while i < n and text[i].isspace():
            i += 1
        chars: list[str] = []
        if i < n and text[i] == "'":
            i += 1
            while True:
                if i >= n:
                    raise _BadValueError(f"unterminated quote in the value of {key!r}")
                c = text[i]
                if c == "\\" and i + 1 < n:
                    chars.append(text[i + 1])
                    i += 2
                elif c == "'" and i + 1 < n and text[i + 1] == "'":
                    chars.append("'")
                    i += 2
                elif c == "'":
                    i += 1
                    break
                else:
                    chars.append(c)
                    i += 1
            if i < n and not text[i].isspace():
                raise _BadValueError(f"expected a space after the quoted value of {key!r}")
        else:
            while i < n and not text[i].isspace():
                if text[i] == "\\" and i + 1 < n:
                    i += 1
                chars.append(text[i])
                i += 1
            if not chars:
                raise _BadValueError(f"empty value for {key!r} (quote it: {key}='')")
        pairs.append((key, "".join(chars)))


def _unquote_identifier(text: str) -> tuple[str, str] | None:
    """Split ``"quoted name" rest`` (``""`` is a quote), as PgBouncer allows for odd database names."""
    chars: list[str] = []
    i = 1
    while i < len(text):
        if text[i] == '"':
            if text[i + 1 : i + 2] == '"':
                chars.append('"')
                i += 2
                continue
            return "".join(chars), text[i + 1 :]
        chars.append(text[i])
        i += 1
    return None


def _read_file(path: str) -> str:
    try:
        with open(path, encoding="utf-8-sig") as fh:
            return fh.read()
    except OSError as exc:
        raise ConfigError(path, "config file", f"cannot read ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise ConfigError(path, "config file", "not valid UTF-8") from None


def _load_ini(loader: _Loader, text: str) -> None:
    """PgBouncer's own format, read line by line the way its parser does: a value runs to the end of the
    line (so ``;`` inside a connect_query is data), and only whole lines are comments."""
    section: str | None = None
    for lineno, raw_line in enumerate(text.splitlines(), start=1):
        line = raw_line.strip()
        if not line or line[0] in ";#":
            continue
        if line.startswith("%include"):
            target = line[len("%include") :].strip()
            loader.ignored.append(f"%include {target}: not supported yet, ignored")
            continue
        if line.startswith("["):
            if not line.endswith("]"):
                raise ConfigError(loader.source, f"line {lineno}", "expected '[section]'")
            section = line[1:-1].strip().lower()
            if section == "peers":
                loader.peers()
            elif section not in _KNOWN_SECTIONS:
                raise loader.unknown_section(section, f"[{section}]")
            continue
        if section is None:
            raise ConfigError(loader.source, f"line {lineno}", "setting before any [section]")
        if line.startswith('"'):
            split = _unquote_identifier(line)
            rest = split[1].lstrip() if split else ""
            if split is None or not rest.startswith("="):
                raise ConfigError(loader.source, f"line {lineno}", 'expected "name" = value')
            key, value = split[0], rest[1:].strip()
        else:
            key, sep, value = line.partition("=")
            key, value = key.strip(), value.strip()
            if not sep or not key or any(c.isspace() for c in key):
                raise ConfigError(loader.source, f"line {lineno}", "expected 'name = value'")
        if section in _SETTINGS_SECTIONS:
            loader.setting(key, value)
        elif section == "databases":
            loader.database(key, value)
        elif section == "users":
            loader.user(key, value)
        # [peers] entries: already noted once


def _load_toml(loader: _Loader, text: str) -> None:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(loader.source, "syntax", str(exc)) from None
    present = [s for s in _SETTINGS_SECTIONS if s in data]
    if len(present) > 1:
        raise ConfigError(loader.source, "[pooler]", "use either [pgbouncer] or [pooler], not both")
    for top, value in data.items():
        name = top.lower()
        if name not in _KNOWN_SECTIONS:
            if name in _SETTING_CONVERTERS or name in PGBOUNCER_UNSUPPORTED_SETTINGS:
                raise ConfigError(loader.source, top, "settings belong in the [pgbouncer] table")
            raise loader.unknown_section(name, f"[{top}]")
        if name == "peers":
            loader.peers()
            continue
        if not isinstance(value, dict):
            raise ConfigError(loader.source, f"[{top}]", f"expected a table, got {value!r}")
        for key, item in value.items():
            if name in _SETTINGS_SECTIONS:
                loader.setting(key, item)
            elif name == "databases":
                loader.database(key, item)
            else:
                loader.user(key, item)


def _parse_database_url(url: str) -> tuple[dict[str, object], list[str]]:
    """Read ``postgresql://user:password@host:port/dbname?…`` into DatabaseConfig fields.

    Written by hand rather than with urllib's accessors because those lowercase the host, drop
    percent-encoded unix socket paths and decode ``+`` as a space inside passwords. Errors never quote the
    URL: it holds a password.
    """

    def fail(problem: str) -> ConfigError:
        return ConfigError(ENVIRONMENT_SOURCE, "DATABASE_URL", problem)

    scheme, sep, rest = url.strip().partition("://")
    if not sep or scheme.lower() not in ("postgresql", "postgres"):
        raise fail("expected postgresql://user:password@host:port/dbname")
    rest, _, query = rest.partition("?")
    netloc, _, path = rest.partition("/")
    userinfo, at, hostport = netloc.rpartition("@")
    if not at:
        userinfo, hostport = "", netloc
    user_part, _, password_part = userinfo.partition(":")
    if "," in hostport:
        raise fail("several hosts are not supported; give one host")
    host_part, port_part = hostport, ""
    if hostport.startswith("["):
        end = hostport.find("]")
        if end < 0:
            raise fail("unterminated [ in the host")
        host_part, tail = hostport[1:end], hostport[end + 1 :]
        if tail and not tail.startswith(":"):
            raise fail("expected :port after the ]host]")
        port_part = tail[1:]
    elif ":" in hostport:
        host_part, _, port_part = hostport.rpartition(":")
    fields: dict[str, object] = {
        "host": unquote(host_part) or None,
        "port": 5432,
        "dbname": unquote(path) or None,
        "user": unquote(user_part) or None,
        "password": unquote(password_part) or None,
    }
    if port_part:
        fields["port"] = _url_port(port_part, fail)
    ignored: list[str] = []
    for item in query.split("&") if query else ():
        key, _, value = item.partition("=")
        key, value = unquote(key), unquote(value)
        if key in ("host", "user", "password", "dbname"):
            fields[key] = value or None
        elif key == "port":
            fields["port"] = _url_port(value, fail)
        else:
            ignored.append(f"DATABASE_URL parameter {key}: not supported yet, ignored")
    return fields, ignored


def _url_port(text: str, fail: Callable[[str], ConfigError]) -> int:
    try:
        return _int_converter(1, _PORT_MAX, port=True)(text)
    except _BadValueError as exc:
        raise fail(f"port: {exc}") from None


def _apply_environment(loader: _Loader, env: Mapping[str, str]) -> tuple[UserlistEntry, ...]:
    """Environment beats file for every setting: a docker-compose file should be able to tune any knob
    without shipping a config file."""
    for name in _SETTING_CONVERTERS:
        var = _ENV_PREFIX + name.upper()
        if var in env:
            loader.setting(name, env[var], source=ENVIRONMENT_SOURCE, label=var)
            if name in _FILE_SETTINGS:
                loader.resolve_auth_file(os.getcwd())
    known_vars = {_ENV_PREFIX + n.upper() for n in _SETTING_CONVERTERS}
    for var in sorted(env):  # sorted: the ignored-notes come out in a stable order
        if not var.startswith(_ENV_PREFIX) or var in known_vars:
            continue
        name = var[len(_ENV_PREFIX) :].lower()
        if name in PGBOUNCER_UNSUPPORTED_SETTINGS:
            loader.ignored.append(f"{var}: not supported yet, ignored")
        else:
            # Other variables share the prefix (POOLER_DATA_DIR is the CLI's); only a near miss of a real
            # setting is worth mentioning. Compare without the prefix, which would make everything "close".
            match = difflib.get_close_matches(name, list(_SETTING_CONVERTERS), n=1, cutoff=0.8)
            if match:
                loader.ignored.append(
                    f"{var}: not a setting, ignored; did you mean {_ENV_PREFIX + match[0].upper()!r}?"
                )

    url = env.get("DATABASE_URL", "")
    if not url.strip():
        return ()
    fields, ignored = _parse_database_url(url)
    loader.ignored.extend(ignored)
    # The URL picks the server, not the database: a client gets the database it asks for, as with
    # PgBouncer's `*` entry without dbname. The URL's own database name is what `pooler check` logs in to.
    fields.pop("dbname", None)
    base = loader.databases.get("*", DatabaseConfig(name="*"))
    loader.databases["*"] = _with(base, fields)
    user, password = fields["user"], fields["password"]
    if isinstance(user, str) and isinstance(password, str):
        return (UserlistEntry(user, password),)
    return ()


def load_config(path: str | None, environ: Mapping[str, str] | None = None) -> Config:
    """Build the Config the pooler runs on: defaults, then the file (if any), then the environment.

    ``path`` ending in ``.toml`` is the native format; anything else is read as a pgbouncer.ini.
    ``environ`` defaults to ``os.environ``; tests pass a dict so they never depend on the shell.
    """
    env = os.environ if environ is None else environ
    source = path if path is not None else ENVIRONMENT_SOURCE
    loader = _Loader(source)
    if path is not None:
        text = _read_file(path)
        if path.lower().endswith(".toml"):
            _load_toml(loader, text)
        else:
            _load_ini(loader, text)
        loader.resolve_auth_file(os.path.dirname(path) or ".")
    extra_userlist = _apply_environment(loader, env)
    return Config(
        settings=_with(Settings(), loader.settings),
        databases=loader.databases,
        users=loader.users,
        extra_userlist=extra_userlist,
        source=source,
        ignored=tuple(loader.ignored),
    )


def replace_settings(config: Config, **changes: object) -> Config:
    """A copy of ``config`` with some settings changed, validated exactly as if they came from a file.

    Values may be native (``5``, ``PoolMode.SESSION``) or strings as in a file (``"30s"``); errors name
    ``override`` as their source. A relative ``auth_file`` is resolved against the working directory.
    """
    loader = _Loader(OVERRIDE_SOURCE)
    loader.ignored = list(config.ignored)
    for name, value in changes.items():
        loader.setting(name, value)
    loader.resolve_auth_file(os.getcwd())
    return dataclasses.replace(
        config,
        settings=_with(config.settings, loader.settings),
        ignored=tuple(loader.ignored),
    )


def read_userlist(path: str) -> list[UserlistEntry]:
    """Read a PgBouncer ``auth_file``: lines ``"user" "secret"``, ``""`` for a quote, ``;`` comments.

    Unlike PgBouncer, which stops at the first bad line and keeps the users read so far, a bad line is
    an error: a half-read userlist locks out users silently. Errors never echo the line (it holds a secret).
    """
    try:
        with open(path, encoding="utf-8-sig") as fh:
            text = fh.read()
    except OSError as exc:
        raise ConfigError(path, "auth_file", f"cannot read ({exc.strerror or exc}); create it (one "
                          '"user" "password" per line) or point auth_file (POOLER_AUTH_FILE) at your '
                          "userlist") from None
    except UnicodeDecodeError:
        raise ConfigError(path, "auth_file", "not valid UTF-8") from None
    entries: list[UserlistEntry] = []
    for lineno, raw_line in enumerate(text.splitlines(), start=1):
        line = raw_line.strip()
        if not line or line.startswith(";"):
            continue
        user_split = _unquote_identifier(line) if line.startswith('"') else None
        rest = user_split[1].lstrip() if user_split else ""
        secret_split = _unquote_identifier(rest) if rest.startswith('"') else None
        if user_split is None or secret_split is None or (user_split[1] and not user_split[1][0].isspace()):
            raise ConfigError(path, f"line {lineno}", 'expected "user" "secret" (use "" for a quote inside)')
        if not user_split[0]:
            raise ConfigError(path, f"line {lineno}", "empty user name")
        entries.append(UserlistEntry(user_split[0], secret_split[0]))
    return entries


# ==================================================================================================
# Effective values: PgBouncer's precedence, user entry > database entry > [pgbouncer], in one place so
# every caller agrees. These run per client login; they are dict lookups, nothing more.
# ==================================================================================================


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


def effective_pool_mode(config: Config, db: DatabaseConfig, user: str) -> PoolMode:
    entry = config.users.get(user)
    if entry is not None and entry.pool_mode is not None:
        return entry.pool_mode
    return db.pool_mode if db.pool_mode is not None else config.settings.pool_mode


def effective_pool_size(config: Config, db: DatabaseConfig, user: str) -> int:
    entry = config.users.get(user)
    if entry is not None and entry.pool_size is not None:
        return entry.pool_size
    return db.pool_size if db.pool_size is not None else config.settings.default_pool_size


def effective_reserve_pool_size(config: Config, db: DatabaseConfig, user: str) -> int:
    entry = config.users.get(user)
    if entry is not None and entry.reserve_pool_size is not None:
        return entry.reserve_pool_size
    return db.reserve_pool_size if db.reserve_pool_size is not None else config.settings.reserve_pool_size


def effective_min_pool_size(config: Config, db: DatabaseConfig, user: str | None = None) -> int:
    """``user`` is accepted for symmetry with the other pool-size helpers; PgBouncer has no per-user value."""
    return db.min_pool_size if db.min_pool_size is not None else config.settings.min_pool_size


def effective_max_db_connections(config: Config, db: DatabaseConfig) -> int:
    if db.max_db_connections is not None:
        return db.max_db_connections
    return config.settings.max_db_connections


def _user_or_global(config: Config, user: str, name: str) -> typing.Any:
    """A [users] entry's value for ``name`` if it sets one, else the [pgbouncer] section's."""
    entry = config.users.get(user)
    value = getattr(entry, name) if entry is not None else None
    return value if value is not None else getattr(config.settings, name)


def effective_max_user_connections(config: Config, user: str) -> int:
    return int(_user_or_global(config, user, "max_user_connections"))


def effective_query_timeout(config: Config, user: str) -> float:
    return float(_user_or_global(config, user, "query_timeout"))


def effective_query_wait_timeout(config: Config, user: str) -> float:
    return float(_user_or_global(config, user, "query_wait_timeout"))


def effective_idle_transaction_timeout(config: Config, user: str) -> float:
    return float(_user_or_global(config, user, "idle_transaction_timeout"))


def effective_transaction_timeout(config: Config, user: str) -> float:
    return float(_user_or_global(config, user, "transaction_timeout"))


def effective_max_user_client_connections(config: Config, user: str) -> int:
    return int(_user_or_global(config, user, "max_user_client_connections"))


def effective_max_db_client_connections(config: Config, db: DatabaseConfig) -> int:
    if db.max_db_client_connections is not None:
        return db.max_db_client_connections
    return config.settings.max_db_client_connections


def effective_server_lifetime(config: Config, db: DatabaseConfig) -> float:
    return db.server_lifetime if db.server_lifetime is not None else config.settings.server_lifetime


def effective_client_idle_timeout(config: Config, user: str) -> float:
    return float(_user_or_global(config, user, "client_idle_timeout"))
