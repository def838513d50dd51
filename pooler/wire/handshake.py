"""A client's login, the part that is only about bytes and rules: what a startup packet asks for, and
whether the pooler accepts it.

Theory of operation. After the startup packet (and any SSL/GSS/cancel requests, which the shell answers
because they change the connection), a login asks for a user, a database, a protocol version and some
session parameters. ``read_login`` checks all of it against the pooler's rules — protocol 3.x (a newer
minor version or ``_pq_.`` options get a NegotiateProtocolVersion, as Postgres sends), a user name, no
replication, and only parameters the pooler can carry across servers (tracked ones, whatever their case,
in the packet itself or as ``-c name=value`` in ``options``; others only if ``ignore_startup_parameters``
lists them) — and returns either the ``Login`` or the ``Refusal`` to send, with PgBouncer's SQLSTATEs and
a hint naming the fix. Nothing here touches a socket or the pooler's state.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass

from pooler.wire import messages as pq

#: Startup parameters accepted without configuration (PgBouncer's list) besides tracked GUCs.
STARTUP_KEYS = frozenset({"user", "database", "replication", "options"})
_FALSE = frozenset({"false", "off", "no", "0"})


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a login is refused: the FATAL to send."""

    sqlstate: str
    message: str
    hint: str | None = None


@dataclass(frozen=True, slots=True)
class Login:
    """An accepted login request."""

    user: str
    database: str
    tracked: dict[str, str]  # tracked parameters the client set, in Postgres's spelling
    negotiate: bytes  # a NegotiateProtocolVersion to send before authentication, or b""


def read_login(
    startup: pq.StartupPacket, canonical: Callable[[str], str | None], ignored: Collection[str]
) -> Login | Refusal:
    """Check a protocol-3 startup packet; ``canonical`` names tracked parameters, ``ignored`` is
    ``ignore_startup_parameters``."""
    if startup.major != 3:
        return Refusal("0A000", f"unsupported frontend protocol {startup.major}.{startup.minor}: "
                       "server supports 3.0 to 3.0")
    params = startup.params
    unsupported_options = [k for k in params if k.startswith("_pq_.")]
    negotiate = b""
    if startup.minor > 0 or unsupported_options:
        negotiate = pq.negotiate_protocol_version(pq.PROTOCOL_3_0, unsupported_options)
    user = params.get("user", "")
    if not user:
        return Refusal("28000", "no PostgreSQL user name specified in startup packet")
    tracked = startup_parameters(params, canonical, ignored)
    if isinstance(tracked, Refusal):
        return tracked
    return Login(user, params.get("database") or user, tracked, negotiate)


def startup_parameters(
    params: dict[str, str], canonical: Callable[[str], str | None], ignored: Collection[str]
) -> dict[str, str] | Refusal:
    """The tracked parameters a startup packet sets (``options`` included), or why it is refused."""
    tracked: dict[str, str] = {}
    for key, value in params.items():
        name = canonical(key)
        if name is not None:
            tracked[name] = value
        elif key in STARTUP_KEYS or key.startswith("_pq_.") or key in ignored:
            continue
        else:
            return Refusal("08P01", f"unsupported startup parameter: {key}",
                           hint=f"add {key} to ignore_startup_parameters in the pooler config")
    if params.get("replication", "false").lower() not in _FALSE:
        return Refusal("08P01", "replication connections are not supported by the pooler",
                       hint="connect to Postgres directly for replication")
    options = params.get("options", "")
    if options:
        parsed = parse_options(options)
        if parsed is None:
            return Refusal("08P01", f"unsupported startup parameter in options: {options}",
                           hint="only -c name=value settings of tracked parameters pass through the pooler")
        for key, value in parsed:
            name = canonical(key)
            if name is not None:
                tracked[name] = value
            elif key not in ignored:
                return Refusal("08P01", f"unsupported startup parameter in options: {key}",
                               hint=f"add {key} to ignore_startup_parameters, or use the direct endpoint")
    return tracked


def parse_options(options: str) -> list[tuple[str, str]] | None:
    """Parse libpq's ``options`` (``-c name=value`` / ``--name=value``); None when it holds anything else."""
    tokens = options.replace("\\ ", "\x00").split()
    result: list[tuple[str, str]] = []
    i = 0
    while i < len(tokens):
        token = tokens[i].replace("\x00", " ")
        if token == "-c" and i + 1 < len(tokens):
            token = tokens[i + 1].replace("\x00", " ")
            i += 1
        elif token.startswith("-c") or token.startswith("--"):
            token = token[2:]
        else:
            return None
        name, sep, value = token.partition("=")
        if not sep:
            return None
        result.append((name.replace("-", "_"), value))
        i += 1
    return result
