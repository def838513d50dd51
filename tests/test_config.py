"""Config loading: pgbouncer.ini, TOML, environment, DATABASE_URL, userlist, precedence helpers."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import re
import textwrap
from pathlib import Path

import pytest
import scramp

from pooler.config import (
    PGBOUNCER_IGNORED_SETTINGS,
    PGBOUNCER_UNSUPPORTED_SETTINGS,
    Config,
    ConfigError,
    DatabaseConfig,
    PoolMode,
    Settings,
    UserConfig,
    UserlistEntry,
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
    read_userlist,
    replace_settings,
)
from pooler.wire.auth import AuthType

REPO = Path(__file__).resolve().parent.parent

REALISTIC_INI = r"""
;; A pgbouncer.ini as people actually write them.
# hash comments too

[databases]
app = host=db.internal port=5433 dbname=app_prod user=app password='p a s s' pool_size=7
App = host=127.0.0.1 dbname=other
quoted = host=/tmp connect_query='SET search_path TO ''my schema'', public; SELECT 1' timezone=UTC
escaped = host=h connect_query='SELECT \'x\''
legacy = host=h reserve_pool=3 min_pool_size=1 max_db_connections=9 pool_mode=statement
"odd name" = host=h dbname=odd
empty =
* = host=fallback port=6543

[users]
alice = pool_mode=session pool_size=3 max_user_connections=4 query_timeout=30s
bob = reserve_pool_size=2 query_wait_timeout=500ms idle_transaction_timeout=1min client_idle_timeout=1h

[PgBouncer]
LISTEN_ADDR = 0.0.0.0
listen_port = 6433
pool_mode = session
default_pool_size = 10
reserve_pool_timeout = 2.5
server_lifetime = 1h
auth_type = scram-sha-256
auth_file = userlist.txt
admin_users = admin, postgres
stats_users = stats
ignore_startup_parameters = extra_float_digits,  search_path
server_reset_query_always = yes
tcp_keepalive = off
auth_query = SELECT usename, passwd FROM my_lookup($1) ; a semicolon is data, not a comment
"""

EQUIVALENT_TOML = r"""
[databases]
app = "host=db.internal port=5433 dbname=app_prod user=app password='p a s s' pool_size=7"
App = { host = "127.0.0.1", dbname = "other" }
escaped = { host = "h", connect_query = "SELECT 'x'" }
"odd name" = "host=h dbname=odd"
empty = ""
"*" = { host = "fallback", port = 6543 }

[databases.quoted]
host = "/tmp"
connect_query = "SET search_path TO 'my schema', public; SELECT 1"
timezone = "UTC"

[databases.legacy]
host = "h"
reserve_pool_size = 3
min_pool_size = 1
max_db_connections = 9
pool_mode = "statement"

[users]
alice = { pool_mode = "session", pool_size = 3, max_user_connections = 4, query_timeout = 30 }
bob = "reserve_pool_size=2 query_wait_timeout=500ms idle_transaction_timeout=1min client_idle_timeout=1h"

[pooler]
listen_addr = "0.0.0.0"
listen_port = 6433
pool_mode = "session"
default_pool_size = 10
reserve_pool_timeout = 2.5
server_lifetime = "1h"
auth_type = "scram-sha-256"
auth_file = "userlist.txt"
admin_users = ["admin", "postgres"]
stats_users = "stats"
ignore_startup_parameters = ["extra_float_digits", "search_path"]
server_reset_query_always = true
tcp_keepalive = false
auth_query = "SELECT usename, passwd FROM my_lookup($1) ; a semicolon is data, not a comment"
"""


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


def ini(tmp_path: Path, pgbouncer: str = "", databases: str = "", users: str = "") -> str:
    """A pgbouncer.ini with the given section bodies."""
    return write(
        tmp_path,
        "pgbouncer.ini",
        f"[pgbouncer]\n{pgbouncer}\n[databases]\n{databases}\n[users]\n{users}\n",
    )


def error_of(path: str | None, environ: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, environ or {})
    message = str(info.value)
    assert "\n" not in message
    return message


# --- pgbouncer.ini and TOML -----------------------------------------------------------------------


def test_realistic_pgbouncer_ini(tmp_path: Path) -> None:
    path = write(tmp_path, "pgbouncer.ini", REALISTIC_INI)
    config = load_config(path, {})

    assert config.source == path
    assert config.ignored == ()
    assert config.extra_userlist == ()

    s = config.settings
    assert s.listen_addr == "0.0.0.0"  # keys are case-insensitive, like PgBouncer's
    assert s.listen_port == 6433
    assert s.pool_mode is PoolMode.SESSION
    assert s.default_pool_size == 10
    assert s.reserve_pool_timeout == 2.5
    assert s.server_lifetime == 3600.0
    assert s.auth_type is AuthType.SCRAM_SHA_256
    assert s.auth_file == str(tmp_path / "userlist.txt")
    assert s.admin_users == ("admin", "postgres")
    assert s.stats_users == ("stats",)
    assert s.ignore_startup_parameters == ("extra_float_digits", "search_path")
    assert s.server_reset_query_always is True
    assert s.tcp_keepalive is False
    assert s.auth_query == "SELECT usename, passwd FROM my_lookup($1) ; a semicolon is data, not a comment"
    assert s.max_client_conn == Settings().max_client_conn  # untouched settings keep defaults

    dbs = config.databases
    assert set(dbs) == {"app", "App", "quoted", "escaped", "legacy", "odd name", "empty", "*"}
    assert dbs["app"] == DatabaseConfig(
        name="app",
        host="db.internal",
        port=5433,
        dbname="app_prod",
        user="app",
        password="p a s s",
        pool_size=7,
    )
    # database names are case-sensitive
    assert dbs["App"] == DatabaseConfig(name="App", host="127.0.0.1", dbname="other")
    assert dbs["quoted"].connect_query == "SET search_path TO 'my schema', public; SELECT 1"
    assert dbs["quoted"].host == "/tmp"
    assert dbs["quoted"].timezone == "UTC"
    assert dbs["escaped"].connect_query == "SELECT 'x'"
    assert dbs["legacy"] == DatabaseConfig(
        name="legacy",
        host="h",
        reserve_pool_size=3,
        min_pool_size=1,
        max_db_connections=9,
        pool_mode=PoolMode.STATEMENT,
    )
    assert dbs["odd name"].dbname == "odd"
    assert dbs["empty"] == DatabaseConfig(name="empty")
    assert dbs["*"] == DatabaseConfig(name="*", host="fallback", port=6543)

    assert config.users["alice"] == UserConfig(
        name="alice", pool_mode=PoolMode.SESSION, pool_size=3, max_user_connections=4, query_timeout=30.0
    )
    assert config.users["bob"] == UserConfig(
        name="bob",
        reserve_pool_size=2,
        query_wait_timeout=0.5,
        idle_transaction_timeout=60.0,
        client_idle_timeout=3600.0,
    )


def test_toml_equivalent_gives_equal_config(tmp_path: Path) -> None:
    from_ini = load_config(write(tmp_path, "pgbouncer.ini", REALISTIC_INI), {})
    toml_path = write(tmp_path, "pooler.toml", EQUIVALENT_TOML)
    from_toml = load_config(toml_path, {})
    assert from_toml.source == toml_path
    assert dataclasses.replace(from_toml, source="x") == dataclasses.replace(from_ini, source="x")


def test_shipped_examples_load_clean_and_agree() -> None:
    from_ini = load_config(str(REPO / "config" / "pgbouncer.ini"), {})
    from_toml = load_config(str(REPO / "config" / "pooler.toml"), {})
    assert from_ini.ignored == ()
    assert dataclasses.replace(from_toml, source="x") == dataclasses.replace(from_ini, source="x")
    assert from_ini.databases["app"].host == "127.0.0.1"
    assert from_ini.databases["app"].port == 5432
    assert from_ini.settings.auth_file == str(REPO / "config" / "userlist.txt")


def test_shipped_userlist_secrets_are_real() -> None:
    entries = {e.user: e.secret for e in read_userlist(str(REPO / "config" / "userlist.txt"))}
    assert entries["postgres"] == "postgres"
    assert entries["bob"] == "md5" + hashlib.md5(b"bob-secretbob").hexdigest()
    # SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>, recomputed from the documented password.
    head, keys = entries["alice"].split("$", 1)[1].split("$")
    iterations, salt = head.split(":")
    stored, server = keys.split(":")
    _, want_stored, want_server, _ = scramp.ScramMechanism().make_auth_info(
        "alice-secret", iteration_count=int(iterations), salt=base64.b64decode(salt)
    )
    assert base64.b64decode(stored) == want_stored
    assert base64.b64decode(server) == want_server


def test_no_file_means_defaults(tmp_path: Path) -> None:
    config = load_config(None, {})
    assert config == Config(source="environment")
    assert config.settings.pool_mode is PoolMode.TRANSACTION


def test_missing_config_file(tmp_path: Path) -> None:
    path = str(tmp_path / "nope.ini")
    assert error_of(path) == f"{path}: config file: cannot read (No such file or directory)"


def test_toml_pgbouncer_and_pooler_tables_are_aliases_not_both(tmp_path: Path) -> None:
    a = load_config(write(tmp_path, "a.toml", "[pgbouncer]\ndefault_pool_size = 3\n"), {})
    b = load_config(write(tmp_path, "b.toml", "[pooler]\ndefault_pool_size = 3\n"), {})
    assert a.settings == b.settings
    assert a.settings.default_pool_size == 3
    path = write(tmp_path, "c.toml", "[pgbouncer]\nverbose = 1\n[pooler]\nverbose = 2\n")
    assert error_of(path) == f"{path}: [pooler]: use either [pgbouncer] or [pooler], not both"


def test_toml_errors(tmp_path: Path) -> None:
    path = write(tmp_path, "a.toml", "listen_port = 1\n")
    assert error_of(path) == f"{path}: listen_port: settings belong in the [pgbouncer] table"
    path = write(tmp_path, "b.toml", "[database]\n")
    assert error_of(path) == f"{path}: [database]: unknown section; did you mean 'databases'?"
    path = write(tmp_path, "c.toml", "[pgbouncer]\nlisten_port = 'x\n")
    assert error_of(path).startswith(f"{path}: syntax: ")
    path = write(tmp_path, "d.toml", "[pgbouncer]\nlisten_addr = 5\n")
    assert error_of(path) == f"{path}: listen_addr: expected a string, got 5"
    path = write(tmp_path, "e.toml", "[pgbouncer]\ndefault_pool_size = true\n")
    assert error_of(path) == f"{path}: default_pool_size: expected a whole number, got True"
    path = write(tmp_path, "g.toml", "[databases]\napp = { password = 123456 }\n")
    assert error_of(path) == f"{path}: databases.app.password: expected a string"
    path = write(tmp_path, "f.toml", "[databases]\napp = 5\n")
    assert error_of(path) == f"{path}: databases.app: expected a connection string or a table, got int"


def test_ini_syntax_errors(tmp_path: Path) -> None:
    path = write(tmp_path, "a.ini", "listen_port = 1\n")
    assert error_of(path) == f"{path}: line 1: setting before any [section]"
    path = write(tmp_path, "b.ini", "[pgbouncer]\n\nlisten_port 6432\n")
    assert error_of(path) == f"{path}: line 3: expected 'name = value'"
    path = write(tmp_path, "c.ini", "[pgbouncer\n")
    assert error_of(path) == f"{path}: line 1: expected '[section]'"
    path = write(tmp_path, "d.ini", "[databses]\n")
    assert error_of(path) == f"{path}: [databses]: unknown section; did you mean 'databases'?"
    path = write(tmp_path, "e.ini", "[nonsense]\n")
    assert error_of(path) == f"{path}: [nonsense]: unknown section"


def test_include_and_peers_are_ignored_not_fatal(tmp_path: Path) -> None:
    path = write(tmp_path, "a.ini", "%include /etc/pgbouncer/more.ini\n[peers]\n1 = host=/tmp/a\n[pgbouncer]\n")
    assert load_config(path, {}).ignored == (
        "%include /etc/pgbouncer/more.ini: not supported yet, ignored",
        "[peers]: not supported yet, ignored",
    )


# --- values ----------------------------------------------------------------------------------------


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


# --- [databases] and [users] ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entry", "setting", "problem"),
    [
        ("app = host=h pool_sise=5", "databases.app.pool_sise", "unknown key; did you mean 'pool_size'?"),
        ("app = host=h colour=blue", "databases.app.colour", "unknown key"),
        ("app = host=h port=0", "databases.app.port", "expected a port number 1..65535, got '0'"),
        ("app = host=h port=x", "databases.app.port", "expected a whole number, got 'x'"),
        ("app = pool_size=-1", "databases.app.pool_size", "must not be negative, got '-1'"),
        (
            "app = pool_mode=sometimes",
            "databases.app.pool_mode",
            "expected one of session, transaction, statement, got 'sometimes'",
        ),
        (
            "app = host=h password='secret",
            "databases.app",
            "connection string: unterminated quote in the value of 'password'",
        ),
        (
            "app = host=h password=",
            "databases.app",
            "connection string: empty value for 'password' (quote it: password='')",
        ),
        ("app = host", "databases.app", "connection string: expected key=value at 'host'"),
        (
            "app = connect_query='a'b",
            "databases.app",
            "connection string: expected a space after the quoted value of 'connect_query'",
        ),
        (
            "pgbouncer = host=h",
            "databases.pgbouncer",
            "the name 'pgbouncer' is reserved for the admin console",
        ),
    ],
)
def test_database_errors(tmp_path: Path, entry: str, setting: str, problem: str) -> None:
    path = ini(tmp_path, databases=entry)
    message = error_of(path)
    assert message == f"{path}: {setting}: {problem}"
    assert "secret" not in message  # a connstring value may be a password: never echoed


def test_database_keys_pgbouncer_has_and_we_lack_are_ignored(tmp_path: Path) -> None:
    config = load_config(ini(tmp_path, databases="app = host=h auth_dbname=x application_name=y"), {})
    assert config.databases["app"] == DatabaseConfig(name="app", host="h", auth_dbname="x")
    assert config.ignored == ("databases.app.application_name: not supported yet, ignored",)


def test_connstring_quoting_and_repeats(tmp_path: Path) -> None:
    entry = r"app = host = h  password='it''s \'quoted\'' dbname=a dbname=b connect_query='a\\b'"
    db = load_config(ini(tmp_path, databases=entry), {}).databases["app"]
    assert db.host == "h"  # spaces around '=' are allowed, as in PgBouncer
    assert db.password == "it's 'quoted'"
    assert db.dbname == "b"  # a repeated key: last wins
    assert db.connect_query == "a\\b"


def test_user_errors_and_ignored_keys(tmp_path: Path) -> None:
    path = ini(tmp_path, users="alice = pool_mode=session max_user_conections=3")
    assert error_of(path) == (
        f"{path}: users.alice.max_user_conections: unknown key; did you mean 'max_user_connections'?"
    )
    path = ini(tmp_path, users="alice = query_timeout=-1")
    assert error_of(path) == f"{path}: users.alice.query_timeout: must not be negative, got '-1'"
    config = load_config(ini(tmp_path, users="alice = max_user_client_connections=3 transaction_timeout=4"), {})
    assert config.users["alice"] == UserConfig(name="alice", max_user_client_connections=3, transaction_timeout=4.0)
    assert config.ignored == ()


# --- auth_file ------------------------------------------------------------------------------------


def test_auth_file_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sub = tmp_path / "etc"
    sub.mkdir()
    rel = write(sub, "pgbouncer.ini", "[pgbouncer]\nauth_file = users/list.txt\n")
    monkeypatch.chdir(tmp_path)
    assert load_config(rel, {}).settings.auth_file == str(sub / "users" / "list.txt")
    # a config path given relative to the working directory resolves the same way
    assert load_config("etc/pgbouncer.ini", {}).settings.auth_file == str(sub / "users" / "list.txt")
    absolute = write(sub, "abs.ini", "[pgbouncer]\nauth_file = /srv/userlist.txt\n")
    assert load_config(absolute, {}).settings.auth_file == "/srv/userlist.txt"
    # from the environment, a relative path is relative to the working directory
    env = {"POOLER_AUTH_FILE": "u.txt"}
    assert load_config(rel, env).settings.auth_file == str(tmp_path / "u.txt")
    assert load_config(None, {}).settings.auth_file == ""


# --- environment ----------------------------------------------------------------------------------


def test_environment_beats_file(tmp_path: Path) -> None:
    path = ini(tmp_path, "default_pool_size = 10\npool_mode = transaction\nquery_timeout = 5")
    env = {
        "POOLER_DEFAULT_POOL_SIZE": "5",
        "POOLER_POOL_MODE": "session",
        "POOLER_ADMIN_USERS": "root, ops",
        "POOLER_QUERY_TIMEOUT": "2min",
        "POOLER_LOG_CONNECTIONS": "off",
        "UNRELATED": "x",
    }
    config = load_config(path, env)
    assert config.settings.default_pool_size == 5
    assert config.settings.pool_mode is PoolMode.SESSION
    assert config.settings.admin_users == ("root", "ops")
    assert config.settings.query_timeout == 120.0
    assert config.settings.log_connections is False
    assert config.source == path


def test_environment_errors_name_the_variable() -> None:
    assert error_of(None, {"POOLER_DEFAULT_POOL_SIZE": "abc"}) == (
        "environment: POOLER_DEFAULT_POOL_SIZE: expected a whole number, got 'abc'"
    )
    assert error_of(None, {"POOLER_LISTEN_PORT": "0"}) == (
        "environment: POOLER_LISTEN_PORT: expected a port number 1..65535, got '0'"
    )
    assert error_of(None, {"POOLER_POOL_MODE": ""}) == (
        "environment: POOLER_POOL_MODE: expected one of session, transaction, statement, got ''"
    )


def test_environment_empty_string_clears_a_string_setting() -> None:
    assert load_config(None, {"POOLER_SERVER_RESET_QUERY": ""}).settings.server_reset_query == ""


def test_environment_unknown_pooler_variables() -> None:
    env = {"POOLER_DNS_MAX_TTL": "3", "POOLER_DEFAULT_POOL_SIZ": "3", "POOLER_DATA_DIR": "/x"}
    config = load_config(None, env)
    assert config.ignored == (
        "POOLER_DEFAULT_POOL_SIZ: not a setting, ignored; did you mean 'POOLER_DEFAULT_POOL_SIZE'?",
        "POOLER_DNS_MAX_TTL: not supported yet, ignored",
    )
    assert config.settings.default_pool_size == 20


# --- DATABASE_URL ---------------------------------------------------------------------------------


def test_database_url_becomes_the_fallback_and_a_login() -> None:
    config = load_config(None, {"DATABASE_URL": "postgresql://app:s3cret@db.example:6000/appdb"})
    # The server, not the database: a client asking for otherdb gets otherdb (PgBouncer's `*` without dbname).
    assert config.databases == {
        "*": DatabaseConfig(name="*", host="db.example", port=6000, user="app", password="s3cret")
    }
    other = find_database(config, "otherdb")
    assert other is not None and other.dbname == "otherdb" and other.host == "db.example"
    assert config.extra_userlist == (UserlistEntry("app", "s3cret"),)
    assert config.source == "environment"


def test_database_url_forms() -> None:
    def star(url: str) -> DatabaseConfig:
        return load_config(None, {"DATABASE_URL": url}).databases["*"]

    db = star("postgres://u%40corp:p%3Aw%2Bd@localhost/my%20db")
    assert (db.user, db.password, db.host, db.port, db.dbname) == (
        "u@corp",
        "p:w+d",
        "localhost",
        5432,
        None,
    )
    db = star("postgresql://u:p@/app?host=/var/run/postgresql&dbname=x")
    assert (db.host, db.port, db.dbname) == ("/var/run/postgresql", 5432, None)
    db = star("postgresql://u:p@%2Ftmp:5433/app")
    assert (db.host, db.port) == ("/tmp", 5433)
    db = star("postgresql://u:p@[::1]:5434/app")
    assert (db.host, db.port) == ("::1", 5434)
    db = star("postgresql://localhost")
    assert (db.user, db.password, db.dbname) == (None, None, None)
    assert load_config(None, {"DATABASE_URL": "postgresql://u@h/d"}).extra_userlist == ()
    assert load_config(None, {"DATABASE_URL": "  "}).databases == {}


def test_database_url_unsupported_parameters_are_ignored() -> None:
    config = load_config(None, {"DATABASE_URL": "postgresql://u:p@h/d?sslmode=require&port=5555"})
    assert config.databases["*"].port == 5555
    assert config.ignored == ("DATABASE_URL parameter sslmode: not supported yet, ignored",)


def test_database_url_overrides_the_files_fallback(tmp_path: Path) -> None:
    path = ini(tmp_path, databases="* = host=filehost port=1111 pool_size=4\napp = host=apphost")
    config = load_config(path, {"DATABASE_URL": "postgresql://u:p@urlhost/urldb"})
    assert config.databases["*"] == DatabaseConfig(
        name="*", host="urlhost", port=5432, user="u", password="p", pool_size=4
    )
    assert config.databases["app"].host == "apphost"


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("mysql://u:hunter2@h/d", "expected postgresql://user:password@host:port/dbname"),
        ("u:hunter2@h/d", "expected postgresql://user:password@host:port/dbname"),
        ("postgresql://u:hunter2@h:port/d", "port: expected a whole number, got 'port'"),
        ("postgresql://u:hunter2@h:99999/d", "port: expected a port number 1..65535, got '99999'"),
        ("postgresql://u:hunter2@h1,h2/d", "several hosts are not supported; give one host"),
        ("postgresql://u:hunter2@[::1/d", "unterminated [ in the host"),
    ],
)
def test_malformed_database_url(url: str, problem: str) -> None:
    message = error_of(None, {"DATABASE_URL": url})
    assert message == f"environment: DATABASE_URL: {problem}"
    assert "hunter2" not in message


# --- userlist ---------------------------------------------------------------------------------------


def test_read_userlist(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "userlist.txt",
        """
        ; comment line
        "alice" "plain secret"

        "bob"   "md5abc"  trailing fields are ignored, as in PgBouncer
          "we""ird" "pa""ss"
        "empty" ""
        """,
    )
    assert read_userlist(path) == [
        UserlistEntry("alice", "plain secret"),
        UserlistEntry("bob", "md5abc"),
        UserlistEntry('we"ird', 'pa"ss'),
        UserlistEntry("empty", ""),
    ]


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("alice hunter2", 'expected "user" "secret" (use "" for a quote inside)'),
        ('"alice" hunter2', 'expected "user" "secret" (use "" for a quote inside)'),
        ('"alice" "hunter2', 'expected "user" "secret" (use "" for a quote inside)'),
        ('"alice""hunter2"', 'expected "user" "secret" (use "" for a quote inside)'),
        ('"alice"x"hunter2"', 'expected "user" "secret" (use "" for a quote inside)'),
        ('"" "hunter2"', "empty user name"),
    ],
)
def test_read_userlist_malformed_line(tmp_path: Path, line: str, problem: str) -> None:
    path = write(tmp_path, "userlist.txt", f'; header\n"ok" "fine"\n{line}\n')
    with pytest.raises(ConfigError) as info:
        read_userlist(path)
    assert str(info.value) == f"{path}: line 3: {problem}"
    assert "hunter2" not in str(info.value)


def test_read_userlist_missing_file(tmp_path: Path) -> None:
    path = str(tmp_path / "missing.txt")
    with pytest.raises(ConfigError) as info:
        read_userlist(path)
    assert str(info.value) == (f'{path}: auth_file: cannot read (No such file or directory); create it (one "user" '
                               '"password" per line) or point auth_file (POOLER_AUTH_FILE) at your userlist')


# --- replace_settings -------------------------------------------------------------------------------


def test_replace_settings_validates_like_the_loader(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    base = load_config(ini(tmp_path, "default_pool_size = 10", databases="app = host=h"), {})
    monkeypatch.chdir(tmp_path)
    changed = replace_settings(
        base,
        default_pool_size=3,
        pool_mode="session",
        query_timeout="30s",
        admin_users=["a"],
        auth_file="u.txt",
    )
    assert changed.settings.default_pool_size == 3
    assert changed.settings.pool_mode is PoolMode.SESSION
    assert changed.settings.query_timeout == 30.0
    assert changed.settings.admin_users == ("a",)
    assert changed.settings.auth_file == str(tmp_path / "u.txt")
    assert changed.databases == base.databases
    assert changed.source == base.source
    assert base.settings.default_pool_size == 10  # the original snapshot is untouched
    assert replace_settings(base, pool_mode=PoolMode.STATEMENT).settings.pool_mode is PoolMode.STATEMENT

    with pytest.raises(ConfigError) as info:
        replace_settings(base, listen_port=0)
    assert str(info.value) == "override: listen_port: expected a port number 1..65535, got 0"
    with pytest.raises(ConfigError) as info:
        replace_settings(base, default_pool_sise=1)
    assert str(info.value) == "override: default_pool_sise: unknown setting; did you mean 'default_pool_size'?"
    assert replace_settings(base, dns_max_ttl=1).ignored == ("dns_max_ttl: not supported yet, ignored",)


# --- effective values -------------------------------------------------------------------------------


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


# --- docs/settings.md stays true ------------------------------------------------------------------


def test_settings_doc_lists_every_setting_with_its_real_default() -> None:
    doc = (REPO / "docs" / "settings.md").read_text()
    section = doc.split("## [pgbouncer] section", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `(\w+)` \| `([^`]*)` \|", section, flags=re.MULTILINE)
    names = [name for name, _ in rows]
    assert sorted(names) == sorted(f.name for f in dataclasses.fields(Settings))
    defaults = {name: "" if text == '""' else text for name, text in rows}
    # The documented default, read as a config value, must give back the real default.
    assert replace_settings(Config(), **defaults).settings == Settings()


def test_settings_doc_lists_exactly_the_ignored_pgbouncer_settings() -> None:
    doc = (REPO / "docs" / "settings.md").read_text()
    section = doc.split("### Ignored PgBouncer settings", 1)[1].split("\n## ", 1)[0]
    rows = dict(re.findall(r"^\| `(\w+)` \| (.+) \|$", section, flags=re.MULTILINE))
    assert set(rows) == PGBOUNCER_UNSUPPORTED_SETTINGS
    for name, why in rows.items():  # each says why, in the words the admin console's SET answers with
        assert why.rstrip(".").lower() == PGBOUNCER_IGNORED_SETTINGS[name].lower(), name
