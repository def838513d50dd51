"""Validation: one converter per setting and per [databases]/[users] key, so "what is valid" is said once.

Why converters, not checks: every value, whatever its origin (an ini string, a TOML native, an environment
string, a keyword to ``replace_settings``, an admin console SET), goes through the same converter for its
setting and comes out as the typed value the snapshot holds. A converter raises ``BadValueError`` with only
the fault; the caller (pooler.config.loader) knows which file and setting to blame and turns it into a
``ConfigError``. A setting's converter is derived from its type in ``Settings`` unless its meaning has
bounds or a vocabulary (ports, sizes, the words of pooler.config.vocabulary): those are listed here.
"""

from __future__ import annotations

import dataclasses
import math
import re
import typing
from collections.abc import Callable, Mapping

from pooler.config.schema import PGBOUNCER_UNSUPPORTED_SETTINGS, DatabaseConfig, Settings, UserConfig
from pooler.config.vocabulary import (
    LOAD_BALANCE_HOSTS,
    LOG_FORMATS,
    SESSION_STATE_CHECKS,
    SSLMODES,
    PoolMode,
    parse_protocols,
    parse_tls13_ciphers,
)
from pooler.wire.auth import AuthType

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


class BadValueError(Exception):
    """A value's fault, raised before the caller knows which file and setting to blame."""


Converter = Callable[[object], object]
_D = typing.TypeVar("_D", Settings, DatabaseConfig, UserConfig)


def with_values(obj: _D, changes: Mapping[str, object]) -> _D:
    """``dataclasses.replace`` for values the converters already validated: mypy cannot see that a
    converter's ``object`` result fits the field it fills, so that check is the converters' job."""
    loose: dict[str, typing.Any] = dict(changes)
    return dataclasses.replace(obj, **loose)


def _parse_int(raw: object) -> int:
    if isinstance(raw, int) and not isinstance(raw, bool):
        return raw
    if isinstance(raw, str) and _INT_RE.fullmatch(raw.strip()):
        return int(raw.strip())
    raise BadValueError(f"expected a whole number, got {raw!r}")


def _int_converter(low: int = 0, high: int | None = None, *, port: bool = False) -> Callable[[object], int]:
    """Build a whole-number converter; the bound is part of the setting's meaning, so it lives here."""

    def convert(raw: object) -> int:
        value = _parse_int(raw)
        if low <= value and (high is None or value <= high):
            return value
        if port:
            raise BadValueError(f"expected a port number {low}..{high}, got {raw!r}")
        if low == 0 and value < 0:
            raise BadValueError(f"must not be negative, got {raw!r}")
        if value < low:
            raise BadValueError(f"must be at least {low}, got {raw!r}")
        raise BadValueError(f"must be at most {high}, got {raw!r}")

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
        raise BadValueError(f"expected a duration in seconds (e.g. 30, 1.5, 500ms, 15s, 2min, 1h, 1d), got {raw!r}")
    if value < 0:
        raise BadValueError(f"must not be negative, got {raw!r}")
    return value


def _to_bool(raw: object) -> bool:
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, int) and raw in (0, 1):
        return bool(raw)
    if isinstance(raw, str) and raw.strip().lower() in _BOOLEANS:
        return _BOOLEANS[raw.strip().lower()]
    raise BadValueError(f"expected a boolean (1/0, yes/no, true/false, on/off), got {raw!r}")


def _to_str(raw: object) -> str:
    if isinstance(raw, str):
        return raw
    raise BadValueError(f"expected a string, got {raw!r}")


def _to_names(raw: object) -> tuple[str, ...]:
    """PgBouncer lists are comma-separated strings; TOML users will naturally write arrays, so take both."""
    if isinstance(raw, str):
        items: list[object] = list(raw.split(","))
    elif isinstance(raw, list | tuple):
        items = list(raw)
    else:
        raise BadValueError(f"expected a comma-separated list of names, got {raw!r}")
    names: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise BadValueError(f"expected a comma-separated list of names, got {raw!r}")
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
    raise BadValueError(f"expected one of {choices}, got {raw!r}")


def _to_auth_type(raw: object) -> AuthType:
    """PgBouncer's names; ``hba``, ``cert``, ``pam`` and ``ldap`` are refused with the supported list."""
    if isinstance(raw, str):
        text = raw.strip().lower()
        try:
            return AuthType(text)
        except ValueError:
            if text in _PGBOUNCER_ONLY_AUTH_TYPES:
                raise BadValueError(
                    f"{raw!r} is not supported; supported: {_SUPPORTED_AUTH_TYPES}"
                ) from None
    raise BadValueError(f"expected one of {_SUPPORTED_AUTH_TYPES}, got {raw!r}")


def _to_file_mode(raw: object) -> str:
    """``unix_socket_mode``: an octal permission mode such as 0777 or 0770 (PgBouncer's spelling kept)."""
    text = str(raw).strip() if isinstance(raw, str | int) and not isinstance(raw, bool) else ""
    if text and all(c in "01234567" for c in text) and int(text, 8) <= 0o777:
        return text
    raise BadValueError(f"expected an octal file mode such as 0777 or 0770, got {raw!r}")


def _choice_converter(*choices: str) -> Callable[[object], str]:
    def convert(raw: object) -> str:
        if isinstance(raw, str) and raw.strip().lower() in choices:
            return raw.strip().lower()
        raise BadValueError(f"expected one of {', '.join(choices)}, got {raw!r}")

    return convert


#: A whole number that must not be negative: the default for ``int`` settings and most pool sizes.
_NONNEGATIVE = _int_converter()
#: A port a client or server connects to; ``_port_or_off`` where 0 turns the listener off.
to_port = _int_converter(1, _PORT_MAX, port=True)
_port_or_off = _int_converter(0, _PORT_MAX, port=True)
_to_load_balance_hosts = _choice_converter(*LOAD_BALANCE_HOSTS)


def _checked_by(parse: Callable[[str], object]) -> Converter:
    """A text setting kept as written, once ``parse`` (which raises ValueError naming the fault) accepts it."""

    def convert(raw: object) -> str:
        text = _to_str(raw)
        try:
            parse(text)
        except ValueError as exc:
            raise BadValueError(str(exc)) from None
        return text

    return convert


def _build_setting_converters() -> dict[str, Converter]:
    """Derive each setting's converter from ``Settings``' annotations once, so a new field is loadable
    (and overridable from the environment) the moment it is declared."""
    special: dict[str, Converter] = {
        "listen_port": to_port,
        "direct_port": _port_or_off,
        "metrics_port": _port_or_off,
        "http_port": _port_or_off,
        "http_max_header_size": _int_converter(1024),
        "http_max_body_size": _int_converter(1024),
        "http_max_response_size": _int_converter(1024),
        "websocket_max_frame_size": _int_converter(1024),
        "max_packet_size": _int_converter(1024, _MAX_PACKET_SIZE_LIMIT),
        "workers": _int_converter(1, 16),  # the cancel key has 4 bits for the worker (pooler.runtime.workers)
        "auth_type": _to_auth_type,
        "log_format": _choice_converter(*LOG_FORMATS),
        "session_state_check": _choice_converter(*SESSION_STATE_CHECKS),
        "client_tls_sslmode": _choice_converter(*SSLMODES),
        "server_tls_sslmode": _choice_converter(*SSLMODES),
        "client_tls_protocols": _checked_by(parse_protocols),
        "server_tls_protocols": _checked_by(parse_protocols),
        "client_tls13_ciphers": _checked_by(parse_tls13_ciphers),
        "server_tls13_ciphers": _checked_by(parse_tls13_ciphers),
        "load_balance_hosts": _to_load_balance_hosts,
        "unix_socket_mode": _to_file_mode,
        "scram_iterations": _int_converter(4096),
    }
    by_type: dict[object, Converter] = {
        int: _NONNEGATIVE,
        float: _to_seconds,
        bool: _to_bool,
        str: _to_str,
        tuple[str, ...]: _to_names,
        PoolMode: _to_pool_mode,
        AuthType: _to_auth_type,
    }
    hints = typing.get_type_hints(Settings)
    converters: dict[str, Converter] = {}
    for f in dataclasses.fields(Settings):
        converter = special.get(f.name) or by_type.get(hints[f.name])
        if converter is None:  # pragma: no cover - caught by the test suite the day a field is added
            raise TypeError(f"Settings.{f.name}: no converter for {hints[f.name]!r}")
        converters[f.name] = converter
    return converters


SETTING_CONVERTERS: dict[str, Converter] = _build_setting_converters()
ALL_SETTING_NAMES: tuple[str, ...] = tuple(sorted(set(SETTING_CONVERTERS) | PGBOUNCER_UNSUPPORTED_SETTINGS))

#: The pool's keys, the same in a [databases] and a [users] entry. ``reserve_pool`` is PgBouncer's
#: historical spelling, ``reserve_pool_size`` its newer one.
_POOL_KEYS: dict[str, tuple[str, Converter]] = {
    "pool_mode": ("pool_mode", _to_pool_mode),
    "pool_size": ("pool_size", _NONNEGATIVE),
    "reserve_pool": ("reserve_pool_size", _NONNEGATIVE),
    "reserve_pool_size": ("reserve_pool_size", _NONNEGATIVE),
}

#: [databases] connection-string keys -> (DatabaseConfig field, converter).
DATABASE_KEYS: dict[str, tuple[str, Converter]] = {
    "host": ("host", _to_str),
    "port": ("port", to_port),
    "dbname": ("dbname", _to_str),
    "user": ("user", _to_str),
    "password": ("password", _to_str),
    "auth_user": ("auth_user", _to_str),
    **_POOL_KEYS,
    "min_pool_size": ("min_pool_size", _NONNEGATIVE),
    "max_db_connections": ("max_db_connections", _NONNEGATIVE),
    "max_db_client_connections": ("max_db_client_connections", _NONNEGATIVE),
    "server_lifetime": ("server_lifetime", _to_seconds),
    "auth_dbname": ("auth_dbname", _to_str),
    "load_balance_hosts": ("load_balance_hosts", _to_load_balance_hosts),
    "connect_query": ("connect_query", _to_str),
    "client_encoding": ("client_encoding", _to_str),
    "datestyle": ("datestyle", _to_str),
    "timezone": ("timezone", _to_str),
}
DATABASE_KEYS_UNSUPPORTED = frozenset(
    {"auth_query", "application_name"}
)  # fmt: skip

#: [users] keys -> (UserConfig field, converter).
USER_KEYS: dict[str, tuple[str, Converter]] = {
    **_POOL_KEYS,
    "max_user_connections": ("max_user_connections", _NONNEGATIVE),
    "max_user_client_connections": ("max_user_client_connections", _NONNEGATIVE),
    "query_timeout": ("query_timeout", _to_seconds),
    "query_wait_timeout": ("query_wait_timeout", _to_seconds),
    "idle_transaction_timeout": ("idle_transaction_timeout", _to_seconds),
    "transaction_timeout": ("transaction_timeout", _to_seconds),
    "client_idle_timeout": ("client_idle_timeout", _to_seconds),
}
USER_KEYS_UNSUPPORTED: frozenset[str] = frozenset()
