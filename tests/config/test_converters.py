"""Setting values: each setting's converter (durations, booleans, lists, words, bounds) and its one-line errors."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from confhelp import error_of, ini

from pooler.config import (
    ConfigError,
    PoolMode,
    Settings,
    load_config,
)
from pooler.wire.auth import AuthType


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30", 30.0),
        ("1.5", 1.5),
        ("500ms", 0.5),
        ("15s", 15.0),
        ("2min", 120.0),
        ("1h", 3600.0),
        ("1d", 86400.0),
        ("0", 0.0),
        ("2 min", 120.0),
        ("1e1", 10.0),
    ],
)
def test_durations(tmp_path: Path, text: str, seconds: float) -> None:
    config = load_config(ini(tmp_path, f"query_timeout = {text}"), {})
    assert config.settings.query_timeout == seconds


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1", True),
        ("yes", True),
        ("true", True),
        ("On", True),
        ("0", False),
        ("no", False),
        ("FALSE", False),
        ("off", False),
    ],
)
def test_booleans(tmp_path: Path, text: str, value: bool) -> None:
    assert load_config(ini(tmp_path, f"so_reuseport = {text}"), {}).settings.so_reuseport is value


def test_lists_are_stripped_and_empty_items_dropped(tmp_path: Path) -> None:
    config = load_config(ini(tmp_path, "admin_users = a, b ,,c\ntrack_extra_parameters ="), {})
    assert config.settings.admin_users == ("a", "b", "c")
    assert config.settings.track_extra_parameters == ()


def test_enums_are_case_insensitive_and_any_is_its_own_mode(tmp_path: Path) -> None:
    config = load_config(ini(tmp_path, "pool_mode = Statement\nauth_type = Any"), {})
    assert config.settings.pool_mode is PoolMode.STATEMENT
    assert config.settings.auth_type is AuthType.ANY
    assert config.ignored == ()


@pytest.mark.parametrize(
    ("line", "setting", "problem"),
    [
        ("default_pool_size = abc", "default_pool_size", "expected a whole number, got 'abc'"),
        ("default_pool_size = 1.5", "default_pool_size", "expected a whole number, got '1.5'"),
        ("max_client_conn = -1", "max_client_conn", "must not be negative, got '-1'"),
        ("listen_port = 0", "listen_port", "expected a port number 1..65535, got '0'"),
        ("listen_port = 65536", "listen_port", "expected a port number 1..65535, got '65536'"),
        ("metrics_port = 70000", "metrics_port", "expected a port number 0..65535, got '70000'"),
        ("direct_port = -1", "direct_port", "expected a port number 0..65535, got '-1'"),
        ("max_packet_size = 1023", "max_packet_size", "must be at least 1024, got '1023'"),
        ("max_packet_size = 2147483648", "max_packet_size", "must be at most 2147483647, got '2147483648'"),
        ("workers = 0", "workers", "must be at least 1, got '0'"),
        ("query_timeout = -5", "query_timeout", "must not be negative, got '-5'"),
        (
            "server_lifetime = forever",
            "server_lifetime",
            "expected a duration in seconds (e.g. 30, 1.5, 500ms, 15s, 2min, 1h, 1d), got 'forever'",
        ),
        (
            "server_lifetime = 5m",
            "server_lifetime",
            "expected a duration in seconds (e.g. 30, 1.5, 500ms, 15s, 2min, 1h, 1d), got '5m'",
        ),
        (
            "so_reuseport = maybe",
            "so_reuseport",
            "expected a boolean (1/0, yes/no, true/false, on/off), got 'maybe'",
        ),
        (
            "pool_mode = sessions",
            "pool_mode",
            "expected one of session, transaction, statement, got 'sessions'",
        ),
        (
            "auth_type = hba",
            "auth_type",
            "'hba' is not supported; supported: trust, any, plain, md5, scram-sha-256",
        ),
        (
            "auth_type = cert",
            "auth_type",
            "'cert' is not supported; supported: trust, any, plain, md5, scram-sha-256",
        ),
        ("auth_type = md6", "auth_type", "expected one of trust, any, plain, md5, scram-sha-256, got 'md6'"),
        ("log_format = xml", "log_format", "expected one of auto, json, console, got 'xml'"),
        (
            "session_state_check = maybe",
            "session_state_check",
            "expected one of warn, error, off, got 'maybe'",
        ),
        ("default_pool_siz = 5", "default_pool_siz", "unknown setting; did you mean 'default_pool_size'?"),
        (
            "server_tls_sslmod = disable",
            "server_tls_sslmod",
            "unknown setting; did you mean 'server_tls_sslmode'?",
        ),
        ("frobnicate = 1", "frobnicate", "unknown setting"),
    ],
)
def test_setting_errors_are_one_precise_line(tmp_path: Path, line: str, setting: str, problem: str) -> None:
    path = ini(tmp_path, line)
    assert error_of(path) == f"{path}: {setting}: {problem}"


def test_error_attributes(tmp_path: Path) -> None:
    path = ini(tmp_path, "default_pool_size = abc")
    with pytest.raises(ConfigError) as info:
        load_config(path, {})
    assert (info.value.source, info.value.setting, info.value.problem) == (
        path,
        "default_pool_size",
        "expected a whole number, got 'abc'",
    )


def test_pgbouncer_settings_we_lack_are_ignored_in_order(tmp_path: Path) -> None:
    lines = "client_tls_ecdhcurve = auto\ndns_max_ttl = 15\npeer_id = 1\nSYSLOG = 1\nlogfile = /tmp/x.log"
    config = load_config(ini(tmp_path, lines), {})
    assert config.ignored == (
        "client_tls_ecdhcurve: not supported yet, ignored",
        "dns_max_ttl: not supported yet, ignored",
        "peer_id: not supported yet, ignored",
        "syslog: not supported yet, ignored",
    )
    assert config.settings.logfile == "/tmp/x.log"  # logfile is ours, not ignored


def test_every_setting_accepts_its_own_default_from_the_environment() -> None:
    """Guards the annotation-driven converter table: a new Settings field must be loadable."""
    defaults = Settings()
    environ: dict[str, str] = {}
    for f in dataclasses.fields(Settings):
        value = getattr(defaults, f.name)
        if isinstance(value, bool):
            text = "1" if value else "0"
        elif isinstance(value, tuple):
            text = ",".join(value)
        else:
            text = str(value)
        environ[f"POOLER_{f.name.upper()}"] = text
    config = load_config(None, environ)
    assert config.settings == defaults
    assert config.ignored == ()
