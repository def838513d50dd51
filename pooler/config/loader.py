"""Loading: defaults < file (pgbouncer.ini or pooler.toml) < environment, into one validated ``Config``.

Why one loader for every source: an ini line, a TOML value, a ``POOLER_<SETTING>`` variable and a keyword
to ``replace_settings`` all pass through ``_Loader.setting``, so they are validated by the same converter
and their errors name the file (or variable) and the setting the same way. The environment overrides any
setting so a docker-compose file needs no config file at all, and ``DATABASE_URL`` becomes the ``*``
fallback. The [databases] and [users] entries, ``%include`` and [peers] (noted and ignored) are read here
too; an ``auth_file`` is read by ``read_userlist`` (at start and on RELOAD, by the runtime).
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import tomllib
from collections.abc import Iterable, Mapping

from pooler.config.converters import (
    ALL_SETTING_NAMES,
    DATABASE_KEYS,
    DATABASE_KEYS_UNSUPPORTED,
    SETTING_CONVERTERS,
    USER_KEYS,
    USER_KEYS_UNSUPPORTED,
    BadValueError,
    Converter,
    with_values,
)
from pooler.config.schema import (
    ADMIN_DATABASE,
    ENVIRONMENT_SOURCE,
    OVERRIDE_SOURCE,
    PGBOUNCER_UNSUPPORTED_SETTINGS,
    Config,
    ConfigError,
    DatabaseConfig,
    Settings,
    UserConfig,
    UserlistEntry,
)
from pooler.config.syntax import parse_connstring, parse_database_url, unquote_identifier

_ENV_PREFIX = "POOLER_"

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
        converter = SETTING_CONVERTERS.get(key)
        if converter is None:
            if key in PGBOUNCER_UNSUPPORTED_SETTINGS:
                self.ignored.append(f"{shown}: not supported yet, ignored")
                return
            raise ConfigError(src, shown, "unknown setting" + _suggest(key, ALL_SETTING_NAMES))
        try:
            self.settings[key] = converter(raw)
        except BadValueError as exc:
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
        keys: Mapping[str, tuple[str, Converter]],
        unsupported: frozenset[str],
    ) -> dict[str, object]:
        where = f"{section}.{name}"
        pairs: list[tuple[str, object]]
        if isinstance(spec, str):
            try:
                pairs = list(parse_connstring(spec))
            except BadValueError as exc:
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
            except BadValueError as exc:
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
        fields = self._entry_fields("databases", name, spec, DATABASE_KEYS, DATABASE_KEYS_UNSUPPORTED)
        self.databases[name] = with_values(DatabaseConfig(name=name), fields)

    def user(self, name: str, spec: object) -> None:
        if not name:
            raise ConfigError(self.source, "users", "empty user name")
        fields = self._entry_fields("users", name, spec, USER_KEYS, USER_KEYS_UNSUPPORTED)
        self.users[name] = with_values(UserConfig(name=name), fields)

    def peers(self) -> None:
        if not self.seen_peers:
            self.seen_peers = True
            self.ignored.append("[peers]: not supported yet, ignored")

    # -- sections ---------------------------------------------------------------------------------

    def unknown_section(self, section: str, label: str) -> ConfigError:
        return ConfigError(self.source, label, "unknown section" + _suggest(section, _KNOWN_SECTIONS))


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
            split = unquote_identifier(line)
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
            if name in SETTING_CONVERTERS or name in PGBOUNCER_UNSUPPORTED_SETTINGS:
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


def _apply_environment(loader: _Loader, env: Mapping[str, str]) -> tuple[UserlistEntry, ...]:
    """Environment beats file for every setting: a docker-compose file should be able to tune any knob
    without shipping a config file."""
    for name in SETTING_CONVERTERS:
        var = _ENV_PREFIX + name.upper()
        if var in env:
            loader.setting(name, env[var], source=ENVIRONMENT_SOURCE, label=var)
            if name in _FILE_SETTINGS:
                loader.resolve_auth_file(os.getcwd())
    known_vars = {_ENV_PREFIX + n.upper() for n in SETTING_CONVERTERS}
    for var in sorted(env):  # sorted: the ignored-notes come out in a stable order
        if not var.startswith(_ENV_PREFIX) or var in known_vars:
            continue
        name = var[len(_ENV_PREFIX) :].lower()
        if name in PGBOUNCER_UNSUPPORTED_SETTINGS:
            loader.ignored.append(f"{var}: not supported yet, ignored")
        else:
            # Other variables share the prefix (POOLER_DATA_DIR is the CLI's); only a near miss of a real
            # setting is worth mentioning. Compare without the prefix, which would make everything "close".
            match = difflib.get_close_matches(name, list(SETTING_CONVERTERS), n=1, cutoff=0.8)
            if match:
                loader.ignored.append(
                    f"{var}: not a setting, ignored; did you mean {_ENV_PREFIX + match[0].upper()!r}?"
                )

    url = env.get("DATABASE_URL", "")
    if not url.strip():
        return ()
    fields, ignored = parse_database_url(url)
    loader.ignored.extend(ignored)
    # The URL picks the server, not the database: a client gets the database it asks for, as with
    # PgBouncer's `*` entry without dbname. The URL's own database name is what `pooler check` logs in to.
    fields.pop("dbname", None)
    base = loader.databases.get("*", DatabaseConfig(name="*"))
    loader.databases["*"] = with_values(base, fields)
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
        settings=with_values(Settings(), loader.settings),
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
        settings=with_values(config.settings, loader.settings),
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
        user_split = unquote_identifier(line) if line.startswith('"') else None
        rest = user_split[1].lstrip() if user_split else ""
        secret_split = unquote_identifier(rest) if rest.startswith('"') else None
        if user_split is None or secret_split is None or (user_split[1] and not user_split[1][0].isspace()):
            raise ConfigError(path, f"line {lineno}", 'expected "user" "secret" (use "" for a quote inside)')
        if not user_split[0]:
            raise ConfigError(path, f"line {lineno}", "empty user name")
        entries.append(UserlistEntry(user_split[0], secret_split[0]))
    return entries
