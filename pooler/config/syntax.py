"""The text forms a config is written in, split into names and values: libpq ``key=value`` strings,
PgBouncer's double-quoted names, and ``postgresql://`` URLs.

Why apart from the loader: these are lexical rules shared by several sources (a [databases] entry, an
``auth_file`` line, ``DATABASE_URL``), and each has quoting pitfalls worth one careful owner. Nothing here
knows what a key means; pooler.config.converters says that. None of them ever echoes a value in an error,
because the value may be a password.
"""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import unquote

from pooler.config.converters import BadValueError, to_port
from pooler.config.schema import ENVIRONMENT_SOURCE, ConfigError


def parse_connstring(text: str) -> list[tuple[str, str]]:
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
            raise BadValueError(f"expected key=value at {key or text[start : start + 1]!r}")
        i += 1
        while i < n and text[i].isspace():
            i += 1
        chars: list[str] = []
        if i < n and text[i] == "'":
            i += 1
            while True:
                if i >= n:
                    raise BadValueError(f"unterminated quote in the value of {key!r}")
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
                raise BadValueError(f"expected a space after the quoted value of {key!r}")
        else:
            while i < n and not text[i].isspace():
                if text[i] == "\\" and i + 1 < n:
                    i += 1
                chars.append(text[i])
                i += 1
            if not chars:
                raise BadValueError(f"empty value for {key!r} (quote it: {key}='')")
        pairs.append((key, "".join(chars)))


def unquote_identifier(text: str) -> tuple[str, str] | None:
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


def parse_database_url(url: str) -> tuple[dict[str, object], list[str]]:
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
        return to_port(text)
    except BadValueError as exc:
        raise fail(f"port: {exc}") from None
