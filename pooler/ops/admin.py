"""The admin console: the virtual database ``pgbouncer``, with PgBouncer's commands and column names.

psql, scripts and pgbouncer_exporter read it as they read PgBouncer's: the same commands (SHOW POOLS,
PAUSE, RELOAD, …), the same column names, order and types (text, int4, int8, numeric), the same
command tags, simple query protocol only.

Theory of operation. A client that logs in to database ``pgbouncer`` authenticates like any other; then
``start_session`` checks ``admin_users`` (everything) / ``stats_users`` (SHOW only), sends the console's
own welcome (its own ``server_version``, BackendKeyData, ReadyForQuery) and hands the socket to an
``AdminSession`` with ``transport.set_protocol``: from then on the console's bytes never touch the
data path. The ``ClientConnection`` stays registered (it counts toward ``max_client_conn``, shows in
SHOW CLIENTS, is closed by KILL_CLIENT and shutdown), and the session tells it when the socket closes.

Commands are parsed by ``parse_commands`` (a pure function) and run one at a time; the ones that wait
(PAUSE, WAIT_CLOSE) hold the connection's next queries until they finish, as PgBouncer does. One query
may hold several commands separated by ``;`` (``psql -c "SHOW POOLS; SHOW STATS;"``), answered with one
result each, as Postgres answers a multi-statement query; PgBouncer takes only one, we take both
because that is what psql users type. As with Postgres, the whole text is parsed first, so a command
that is not one refuses the query before anything runs; a command that fails while running ends it,
after the results of the ones before it.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pooler import __version__
from pooler.config import ConfigError
from pooler.log import log
from pooler.net.login import ClientState
from pooler.net.peer import ADMIN_PEER_USER, is_own_user
from pooler.ops import control, introspect
from pooler.ops.metrics import VERSION_STRING
from pooler.ops.stats_log import StatsPeriod
from pooler.runtime.process import Pooler, ShutdownMode
from pooler.wire import messages as pq
from pooler.wire.framing import MessageReader

if TYPE_CHECKING:
    from pooler.net.client import ClientConnection

# --- the wire ------------------------------------------------------------------------------------------

#: PgBouncer's column type letters: s text, i int4, q int8, N numeric, T timestamp shown as text.
_TYPES = {"s": (pq.TEXT_OID, -1), "i": (pq.INT4_OID, 4), "q": (pq.INT8_OID, 8), "N": (pq.NUMERIC_OID, -1),
          "T": (pq.TEXT_OID, -1)}

#: The largest message the console reads (a query of a few hundred bytes is the most it needs).
MAX_ADMIN_MESSAGE = 1024 * 1024

#: SQLSTATE of console errors: PgBouncer's ``08P01`` for all of them; RELOAD failing is ``F0000``.
ADMIN_SQLSTATE = "08P01"


def row_description(names: Sequence[str], types: str) -> bytes:
    """RowDescription for text-format columns with PgBouncer's type letters."""
    assert len(names) == len(types), (names, types)
    return pq.row_description([(name, *_TYPES[letter]) for name, letter in zip(names, types, strict=True)])


def data_row(values: Sequence[object]) -> bytes:
    """DataRow: None is SQL NULL, everything else its text form."""
    return pq.data_row([None if value is None else str(value).encode() for value in values])


def result(names: Sequence[str], types: str, rows: Sequence[Sequence[object]], tag: str = "SHOW") -> bytes:
    return row_description(names, types) + b"".join(data_row(r) for r in rows) + pq.command_complete(tag)


# --- parsing ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AdminCommand:
    """A parsed console command: ``verb`` lower-cased; ``arg`` SHOW's subject, a database, a client id or
    SHUTDOWN's mode (as written, unquoted); ``value`` SET's value."""

    verb: str
    arg: str | None = None
    value: str | None = None


class AdminSyntaxError(Exception):
    """The text is not a console command; ``str()`` is the message for the client."""


_IDENT = r'"(?:[^"]|"")+"|[^\s"\';=]+'
_COMMAND_RE = re.compile(rf"(?P<verb>[A-Za-z_]+)(?:\s+(?P<arg>{_IDENT}))?", re.IGNORECASE)
_SET_RE = re.compile(
    rf"set\s+(?P<key>{_IDENT})\s*(?:=|\s+to\s+)\s*(?P<value>'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|[^\s'\";]+)",
    re.IGNORECASE,
)


def _unquote(text: str) -> str:
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        quote = text[0]
        return text[1:-1].replace(quote * 2, quote)
    return text


def split_commands(text: str) -> list[str]:
    """The ``;``-separated commands of a query, without the empty ones; a ``;`` inside ``'…'`` or ``"…"``
    (a SET value, a quoted database name) does not separate. An unterminated quote keeps the rest as one
    command, which then fails to parse with the usual error."""
    commands: list[str] = []
    start = 0
    quote = ""
    for i, char in enumerate(text):
        if quote:
            if char == quote:
                quote = ""  # a doubled quote closes and reopens: the same result
        elif char in "'\"":
            quote = char
        elif char == ";":
            commands.append(text[start:i])
            start = i + 1
    commands.append(text[start:])
    return [c.strip() for c in commands if c.strip()]


def parse_commands(text: str) -> list[AdminCommand]:
    """Every command of a query, in order; ``[]`` for an empty query. Raises AdminSyntaxError, naming
    the offending command, if any one of them is not a console command (then none runs)."""
    commands: list[AdminCommand] = []
    for text_of_one in split_commands(text):
        command = parse_command(text_of_one)
        if command is None:
            continue
        if command.verb not in ("show", "select", "set") and command.verb not in _HANDLERS:
            raise AdminSyntaxError(f"invalid command '{text_of_one}', use SHOW HELP;")
        commands.append(command)
    return commands


def parse_command(text: str) -> AdminCommand | None:
    """Parse one console command (an optional trailing ``;``); None for an empty query.

    Raises AdminSyntaxError for anything else, including two commands (``parse_commands`` splits them).
    """
    body = text.strip()
    while body.endswith(";"):
        body = body[:-1].rstrip()
    if not body:
        return None
    match = _SET_RE.fullmatch(body)
    if match:
        return AdminCommand("set", _unquote(match.group("key")), _unquote(match.group("value")))
    match = _COMMAND_RE.fullmatch(body)
    if match is None:
        raise AdminSyntaxError(f"invalid command '{text.strip()}', use SHOW HELP;")
    arg = match.group("arg")
    return AdminCommand(match.group("verb").lower(), _unquote(arg) if arg is not None else None)


# --- commands --------------------------------------------------------------------------------------------

USAGE = """
\tSHOW HELP|CONFIG|DATABASES|POOLS|CLIENTS|SERVERS|USERS|VERSION|STATE
\tSHOW LISTS|STATS|STATS_TOTALS|STATS_AVERAGES|TOTALS
\tSET key = arg
\tRELOAD
\tPAUSE [<db>]
\tRESUME [<db>]
\tDISABLE <db>
\tENABLE <db>
\tRECONNECT [<db>]
\tKILL [<db>]
\tKILL_CLIENT <client_id>
\tSHUTDOWN
\tSHUTDOWN WAIT_FOR_SERVERS|WAIT_FOR_CLIENTS
\tWAIT_CLOSE [<db>]"""

COMMANDS_HINT = ("commands: SHOW HELP|CONFIG|DATABASES|POOLS|CLIENTS|SERVERS|USERS|VERSION|STATE|LISTS|STATS|"
                 "STATS_TOTALS|STATS_AVERAGES|TOTALS; SET key = value; RELOAD; PAUSE [db]; RESUME [db]; DISABLE db; "
                 "ENABLE db; RECONNECT [db]; KILL [db]; KILL_CLIENT id; WAIT_CLOSE [db]; "
                 "SHUTDOWN [WAIT_FOR_SERVERS|WAIT_FOR_CLIENTS]")

#: SHOW/SET of these answer with constants, for drivers that insist on reading or setting them.
_FAKE_PARAMETERS = {
    "client_encoding": "UTF8",
    "default_transaction_isolation": "read committed",
    "standard_conforming_strings": "on",
    "datestyle": "ISO",
    "timezone": "GMT",
}

_STATS_NAMES = ("server_assignment_count", "xact_count", "query_count", "received", "sent", "xact_time", "query_time",
                "wait_time", "client_parse_count", "server_parse_count", "bind_count", "client_login_count")
_TIME_FIELDS = frozenset({"xact_time", "query_time", "wait_time"})


class AdminError(Exception):
    def __init__(self, message: str, *, sqlstate: str = ADMIN_SQLSTATE, hint: str | None = None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate
        self.hint = hint


def _stat_values(totals: introspect.Totals) -> list[int]:
    out = []
    for name in _STATS_NAMES:
        value = getattr(totals, name)
        out.append(round(value * 1_000_000) if name in _TIME_FIELDS else int(value))
    return out


def show_stats(pooler: Pooler, stats: StatsPeriod, which: str) -> bytes:
    """SHOW STATS / STATS_TOTALS / STATS_AVERAGES / TOTALS (times in µs, as PgBouncer)."""
    totals = introspect.by_database(pooler, introspect.pool_totals(pooler))
    averages = stats.averages()
    if which == "stats":
        names = ["database", "total_server_assignment_count", "total_xact_count", "total_query_count",
                 "total_received", "total_sent", "total_xact_time", "total_query_time", "total_wait_time",
                 "total_client_parse_count", "total_server_parse_count", "total_bind_count",
                 "total_client_login_count", "avg_server_assignment_count", "avg_xact_count", "avg_query_count",
                 "avg_recv", "avg_sent", "avg_xact_time", "avg_query_time", "avg_wait_time",
                 "avg_client_parse_count", "avg_server_parse_count", "avg_bind_count", "avg_client_login_count"]
        rows = [[db, *_stat_values(t), *_stat_values(averages.get(db, introspect.Totals()))]
                for db, t in totals.items()]
        return result(names, "s" + "N" * 24, rows)
    if which in ("stats_totals", "stats_averages"):
        names = ["database", "server_assignment_count", "xact_count", "query_count", "bytes_received", "bytes_sent",
                 "xact_time", "query_time", "wait_time"]
        if which == "stats_totals":
            names += ["client_parse_count", "server_parse_count", "bind_count", "client_login_count"]
            rows = [[db, *_stat_values(t)] for db, t in totals.items()]
        else:
            names += ["avg_client_parse_count", "avg_server_parse_count", "avg_bind_count", "avg_client_login_count"]
            rows = [[db, *_stat_values(averages.get(db, introspect.Totals()))] for db in totals]
        return result(names, "s" + "N" * 12, rows)
    # totals: one row per figure, over all databases
    overall = introspect.Totals.sum(totals.values())
    overall_avg = stats.overall_average()
    labels = ["server_assignment_count", "xact_count", "query_count", "client_bytes", "server_bytes", "xact_time",
              "query_time", "wait_time", "ps_client_parse_count", "ps_server_parse_count", "ps_bind_count",
              "client_login_count"]
    rows = [[f"total_{label}", v] for label, v in zip(labels, _stat_values(overall), strict=True)]
    rows += [[f"avg_{label}", v] for label, v in zip(labels, _stat_values(overall_avg), strict=True)]
    return result(["name", "value"], "sN", rows)


_SOCKET_NAMES = ["type", "user", "database", "replication", "state", "addr", "port", "local_addr", "local_port",
                 "connect_time", "request_time", "wait", "wait_us", "close_needed", "ptr", "link", "remote_pid",
                 "tls", "application_name", "prepared_statements", "id"]
_SOCKET_TYPES = "ssssssisiTTiiississii"


def _sockets(rows: list[introspect.ConnectionRow]) -> bytes:
    return result(_SOCKET_NAMES, _SOCKET_TYPES, [[getattr(r, n) for n in _SOCKET_NAMES] for r in rows])


def show(pooler: Pooler, stats: StatsPeriod, subject: str) -> bytes:
    """Every SHOW; raises AdminError for an unknown subject."""
    what = subject.lower()
    if what == "help":
        return pq.notice_response("Console usage", detail=USAGE) + pq.command_complete("SHOW")
    if what == "version":
        return result(["version"], "s", [[VERSION_STRING]])
    if what == "config":
        return result(["key", "value", "default", "changeable"], "ssss", introspect.config_rows(pooler.config.settings))
    if what == "databases":
        names = ["name", "host", "port", "database", "force_user", "pool_size", "min_pool_size", "reserve_pool_size",
                 "server_lifetime", "pool_mode", "load_balance_hosts", "max_connections", "current_connections",
                 "max_client_connections", "current_client_connections", "paused", "disabled"]
        rows = [[getattr(r, n) if n != "load_balance_hosts" else None for n in names]
                for r in introspect.database_rows(pooler)]
        return result(names, "ssissiiiissiiiiii", rows)
    if what == "pools":
        names = ["database", "user", "cl_active", "cl_waiting", "cl_active_cancel_req", "cl_waiting_cancel_req",
                 "sv_active", "sv_active_cancel", "sv_being_canceled", "sv_idle", "sv_used", "sv_tested", "sv_login",
                 "maxwait", "maxwait_us", "pool_mode", "load_balance_hosts"]
        rows = [[p.database, p.user, p.cl_active, p.cl_waiting, 0, 0, p.sv_active, 0, p.sv_being_canceled, p.sv_idle,
                 p.sv_used, p.sv_tested, p.sv_login, int(p.maxwait), int((p.maxwait % 1) * 1_000_000), p.pool_mode,
                 None]
                for p in introspect.pool_counts(pooler)]
        return result(names, "ssiiiiiiiiiiiiiss", rows)
    if what == "clients":
        return _sockets(introspect.client_rows(pooler))
    if what == "servers":
        return _sockets(introspect.server_rows(pooler))
    if what == "users":
        names = ["name", "pool_size", "reserve_pool_size", "pool_mode", "max_user_connections", "current_connections",
                 "max_user_client_connections", "current_client_connections"]
        return result(names, "ssssiiii", [[getattr(r, n) for n in names] for r in introspect.user_rows(pooler)])
    if what == "lists":
        return result(["list", "items"], "si", introspect.lists(pooler))
    if what == "state":
        paused = pooler.paused or pooler.shutdown_mode == ShutdownMode.WAIT_FOR_SERVERS
        return result(["key", "value"], "ss", [["active", "no" if paused else "yes"],
                                                ["paused", "yes" if paused else "no"], ["suspended", "no"]])
    if what in ("stats", "stats_totals", "stats_averages", "totals"):
        return show_stats(pooler, stats, what)
    if what in _FAKE_PARAMETERS:
        return result([what], "s", [[_FAKE_PARAMETERS[what]]])
    if what in ("peers",):
        return result(["peer_id", "host", "port", "pool_size"], "isii", [])
    if what == "peer_pools":
        return result(["peer_id", "cl_active_cancel_req", "cl_waiting_cancel_req", "sv_active_cancel", "sv_login"],
                      "iiiii", [])
    if what == "dns_hosts":
        return result(["hostname", "ttl", "addrs"], "sqs", [])
    if what == "dns_zones":
        return result(["zonename", "serial", "count"], "sqi", [])
    raise AdminError(f"unknown SHOW subject: {subject}", hint=COMMANDS_HINT)


# --- the session ----------------------------------------------------------------------------------------

_Response = bytes | Awaitable[bytes]


def welcome_message(client: ClientConnection) -> bytes:
    params = {
        "server_version": f"{__version__}/pooler",
        "client_encoding": "UTF8",
        "server_encoding": "UTF8",
        "DateStyle": "ISO",
        "TimeZone": "GMT",
        "standard_conforming_strings": "on",
        "is_superuser": "on",
        "application_name": client.startup_params.get("application_name", ""),
    }
    out = [pq.parameter_status(k, v) for k, v in params.items()]
    out.append(pq.backend_key_data(*pq.unpack_cancel_key(client.key)))
    out.append(pq.READY_FOR_QUERY_IDLE)
    return b"".join(out)


class AdminConsole:
    """The console of one pooler process: what the composition root plugs into ``Pooler.on_admin_login``."""

    def __init__(self, pooler: Pooler, stats: StatsPeriod) -> None:
        self.pooler = pooler
        self.stats = stats

    def login(self, client: ClientConnection) -> None:
        start_session(self.pooler, self.stats, client)


def start_session(pooler: Pooler, stats: StatsPeriod, client: ClientConnection) -> None:
    """A client authenticated to database ``pgbouncer``: admit it to the console or refuse it."""
    settings = pooler.config.settings
    is_admin = client.user in settings.admin_users or (
        client.user == ADMIN_PEER_USER and is_own_user(client.transport))  # PgBouncer's peer login
    if not is_admin and client.user not in settings.stats_users:
        client.fatal(ADMIN_SQLSTATE, "not allowed",
                     hint="the admin console is for admin_users (all commands) and stats_users (SHOW only)")
        return
    transport = client.transport
    if transport is None:
        return
    client.state = ClientState.READY
    pooler.admin_sessions.add(client)
    session = AdminSession(pooler, stats, client, transport, admin=is_admin)
    transport.set_protocol(session)
    transport.write(welcome_message(client))
    if settings.log_connections:
        log.info("login", client=client.id, remote=client.remote, database=client.database, user=client.user,
                 console="admin" if is_admin else "stats")
    # Bytes pipelined behind the login were left with the client connection: take them over.
    asyncio.get_running_loop().call_soon(session.take_over_held)


class AdminSession(asyncio.Protocol):
    """The console's protocol for one connection, installed with ``transport.set_protocol``."""

    def __init__(self, pooler: Pooler, stats: StatsPeriod, client: ClientConnection, transport: asyncio.Transport,
                 *, admin: bool) -> None:
        self.pooler = pooler
        self.stats = stats
        self.client = client
        self.transport: asyncio.Transport | None = transport
        self.admin = admin
        self.reader = MessageReader(MAX_ADMIN_MESSAGE)
        self.busy = False
        self.skip_to_sync = False
        self.task: asyncio.Future[bytes] | None = None
        self.queue: list[AdminCommand] = []  # the rest of a multi-command query, run in order

    # --- asyncio.Protocol ---------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        self._process()

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.task is not None:
            self.task.cancel()
        self.pooler.admin_sessions.discard(self.client)
        self.client.connection_lost(exc)

    def take_over_held(self) -> None:
        held = self.client.take_held()  # the login's leftovers (pipelined behind it): ours now
        if held:
            self.data_received(held)

    # --- messages -----------------------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def _process(self) -> None:
        while not self.busy and self.transport is not None:
            try:
                message = self.reader.next_message()
            except pq.ProtocolViolationError as exc:
                self.client.fatal("08P01", f"{exc} on the admin console")
                return
            if message is None:
                return
            self._message(*message)

    def _message(self, kind: int, payload: bytes) -> None:
        if self.skip_to_sync:
            if kind == pq.SYNC:
                self.skip_to_sync = False
                self._write(pq.READY_FOR_QUERY_IDLE)
            return
        if kind == pq.QUERY:
            self._query(payload.rstrip(b"\x00").decode("utf-8", "replace"))
        elif kind == pq.TERMINATE:
            if self.transport is not None:
                self.transport.close()
        elif kind == pq.SYNC:
            self._write(pq.READY_FOR_QUERY_IDLE)
        elif kind == pq.FLUSH:
            pass
        elif kind in (pq.PARSE, pq.BIND, pq.DESCRIBE, pq.EXECUTE, pq.CLOSE, pq.FUNCTION_CALL):
            # Answer like a server in the extended protocol: one error, then skip to the Sync.
            self._error(AdminError("extended query protocol not supported by admin console",
                                   hint="use the simple query protocol (psql; psycopg or lib/pq without parameters)"),
                        ready=False)
            self.skip_to_sync = kind != pq.FUNCTION_CALL
            if kind == pq.FUNCTION_CALL:
                self._write(pq.READY_FOR_QUERY_IDLE)
        else:
            self.client.fatal("08P01", f"unsupported message type {chr(kind)!r} for the admin console")

    def _error(self, exc: AdminError, *, ready: bool = True) -> None:
        """Answer a refused command with an ERROR; count it (``admin_command`` / ``admin_not_allowed``: a
        console typo is not a protocol violation) and log it as every error sent to a client is."""
        message = str(exc)
        pooler, client = self.pooler, self.client
        kind = "admin_not_allowed" if message.startswith("admin access needed") else "admin_command"
        pooler.error_counts[kind] = pooler.error_counts.get(kind, 0) + 1
        if pooler.config.settings.log_pooler_errors:
            log.warning("pooler error", sqlstate=exc.sqlstate, error=message, client=client.id, remote=client.remote,
                        database=client.database, user=client.user)
        self._write(pq.error_response(exc.sqlstate, message, hint=exc.hint)
                    + (pq.READY_FOR_QUERY_IDLE if ready else b""))

    def _query(self, text: str) -> None:
        self.client.last_active = self.pooler.clock()
        try:
            commands = parse_commands(text)
        except AdminSyntaxError as exc:
            self._error(AdminError(str(exc), hint=COMMANDS_HINT))
            return
        if not commands:
            self._write(pq.EMPTY_QUERY_RESPONSE + pq.READY_FOR_QUERY_IDLE)
            return
        log.debug("admin command", client=self.client.id, user=self.client.user, command=text.strip())
        self.queue = commands
        self._next()

    def _next(self) -> None:
        """Run the queued commands until one waits (its task calls back here) or all are answered."""
        while self.queue:
            command = self.queue.pop(0)
            try:
                response = self._run(command)
            except AdminSyntaxError as exc:
                self._fail(AdminError(str(exc), hint=COMMANDS_HINT))
                return
            except AdminError as exc:
                self._fail(exc)
                return
            except control.ControlError as exc:
                self._fail(AdminError(str(exc)))
                return
            if isinstance(response, bytes):
                self._write(response)
                continue
            self.busy = True
            self.task = asyncio.ensure_future(response)
            self.task.add_done_callback(self._finished)
            return
        self._write(pq.READY_FOR_QUERY_IDLE)

    def _fail(self, exc: AdminError) -> None:
        """A command failed: the rest of its query does not run (as in a multi-statement query)."""
        self.queue = []
        self._error(exc)

    def _finished(self, task: asyncio.Future[bytes]) -> None:
        self.task = None
        self.busy = False
        if task.cancelled():
            return
        exc = task.exception()
        if isinstance(exc, AdminError):
            self._fail(exc)
        elif isinstance(exc, control.ControlError):
            self._fail(AdminError(str(exc)))
        elif exc is not None:
            log.error("admin command failed", client=self.client.id, error=repr(exc))
            self._fail(AdminError(f"internal error: {exc}"))
        else:
            self._write(task.result())
            self._next()
        self._process()

    # --- dispatch -----------------------------------------------------------------------------------

    def _require_admin(self) -> None:
        if not self.admin:
            raise AdminError("admin access needed", hint="this user is in stats_users: SHOW commands only")

    def _run(self, command: AdminCommand) -> _Response:
        verb, arg = command.verb, command.arg
        pooler = self.pooler
        if verb in ("show", "select"):
            if arg is None:
                raise AdminError("SHOW needs a subject", hint=COMMANDS_HINT)
            return show(pooler, self.stats, arg)
        if verb == "set":
            assert arg is not None and command.value is not None
            return self._set(arg, command.value)
        handler = _HANDLERS.get(verb)
        if handler is None:
            raise AdminSyntaxError(f"invalid command '{verb.upper()}{' ' + arg if arg else ''}', use SHOW HELP;")
        self._require_admin()
        log.info("admin command", command=verb.upper(), arg=arg, client=self.client.id, remote=self.client.remote,
                 user=self.client.user)
        return handler(self, arg)

    def _set(self, key: str, value: str) -> bytes:
        if key.lower() in _FAKE_PARAMETERS:
            return pq.notice_response("SET ignored") + pq.command_complete("SET")
        self._require_admin()
        ignored = control.set_setting(self.pooler, key, value)
        log.info("admin command", command="SET", setting=key.lower(), value=value, client=self.client.id,
                 user=self.client.user, ignored=ignored is not None)
        done = pq.command_complete(f"SET {key.lower()}={value}")
        return done if ignored is None else pq.notice_response(ignored) + done

    def _pause(self, arg: str | None) -> _Response:
        control.pause(self.pooler, arg)
        return self._after(control.wait_paused(self.pooler, arg), "PAUSE")

    def _resume(self, arg: str | None) -> bytes:
        control.resume(self.pooler, arg)
        return pq.command_complete("RESUME")

    def _disable(self, arg: str | None) -> bytes:
        if arg is None:
            raise AdminError("a database is required")
        control.disable(self.pooler, arg)
        return pq.command_complete("DISABLE")

    def _enable(self, arg: str | None) -> bytes:
        if arg is None:
            raise AdminError("a database is required")
        control.enable(self.pooler, arg)
        return pq.command_complete("ENABLE")

    def _reconnect(self, arg: str | None) -> bytes:
        control.reconnect(self.pooler, arg)
        return pq.command_complete("RECONNECT")

    def _kill(self, arg: str | None) -> bytes:
        control.kill(self.pooler, arg)
        return pq.command_complete("KILL")

    def _kill_client(self, arg: str | None) -> bytes:
        if arg is None or not arg.isdigit():
            raise AdminError("invalid client id", hint="KILL_CLIENT <id>, with an id from SHOW CLIENTS")
        control.kill_client(self.pooler, int(arg))
        return pq.command_complete("KILL_CLIENT")

    def _reload(self, arg: str | None) -> bytes:
        if arg is not None:
            raise AdminSyntaxError(f"invalid command 'RELOAD {arg}', use SHOW HELP;")
        try:
            control.reload(self.pooler)
        except ConfigError as exc:
            log.error("config reload failed, keeping the old config", error=str(exc))
            raise AdminError(f"RELOAD failed, keeping the running config: {exc}", sqlstate="F0000") from None
        return pq.command_complete("RELOAD")

    def _wait_close(self, arg: str | None) -> _Response:
        if arg is not None:
            control.check_database(self.pooler, arg)
        return self._after(control.wait_close(self.pooler, arg), "WAIT_CLOSE")

    def _shutdown(self, arg: str | None) -> _Response:
        modes = {None: ShutdownMode.IMMEDIATE, "wait_for_servers": ShutdownMode.WAIT_FOR_SERVERS,
                 "wait_for_clients": ShutdownMode.WAIT_FOR_CLIENTS}
        key = arg.lower() if arg is not None else None
        if key not in modes:
            raise AdminSyntaxError(f"invalid command 'SHUTDOWN {arg}', use SHOW HELP;")
        mode = modes[key]
        control.start_shutdown(self.pooler, mode)
        if mode == ShutdownMode.IMMEDIATE:
            return asyncio.get_running_loop().create_future()  # never answered: the connection closes
        return pq.command_complete("SHUTDOWN")

    @staticmethod
    async def _after(wait: Awaitable[None], tag: str) -> bytes:
        await wait
        return pq.command_complete(tag)


_HANDLERS: dict[str, Callable[[AdminSession, str | None], _Response]] = {
    "pause": AdminSession._pause,
    "resume": AdminSession._resume,
    "disable": AdminSession._disable,
    "enable": AdminSession._enable,
    "reconnect": AdminSession._reconnect,
    "kill": AdminSession._kill,
    "kill_client": AdminSession._kill_client,
    "reload": AdminSession._reload,
    "wait_close": AdminSession._wait_close,
    "shutdown": AdminSession._shutdown,
}
