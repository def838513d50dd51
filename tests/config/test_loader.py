"""Config loading: pgbouncer.ini, TOML, environment, DATABASE_URL, userlist, replace_settings."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
from pathlib import Path

import pytest
import scramp
from confhelp import error_of, ini, write

from pooler.config import (
    Config,
    ConfigError,
    DatabaseConfig,
    PoolMode,
    Settings,
    UserConfig,
    UserlistEntry,
    find_database,
    load_config,
    read_userlist,
    replace_settings,
)
from pooler.wire.auth import AuthType

REPO = Path(__file__).resolve().parents[2]

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
