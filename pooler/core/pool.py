"""A pool: the servers of one (database, user) pair and the clients queued for them.

Theory of operation. Idle servers sit on a stack (LIFO, so the warmest backend is reused and the
coldest ones age out under ``server_idle_timeout``; ``server_round_robin`` makes it a queue). A
client that needs a server takes the top one, or joins a FIFO queue; the pool then opens servers
while the queue is longer than the logins in flight, up to ``capacity`` (``pool_size``, plus
``reserve_pool_size`` once the oldest client has waited ``reserve_pool_timeout``), and only while the
pooler-wide caps ``max_db_connections`` / ``max_user_connections`` allow. A released server goes
straight to the head of the queue, so a queued client never waits for a wakeup.

The pool is the one owner of the facts that tie clients and servers together: ``link``/``unlink``
pair them, and ``_change_state`` is the one place a server's state changes, keeping the idle stack
in step (PgBouncer's rule: a state change is a move between the pool's lists). It opens no socket
and imports no shell: servers are opened through the ``PoolHost`` it is given, and clients and
servers are seen through the narrow protocols below.

A server comes back to the pool only clean: a client that leaves mid-transaction gets its server
rolled back first, one that leaves mid-query gets it cancelled and closed.
"""

from __future__ import annotations

import collections
import contextlib
import enum
from collections.abc import Callable
from typing import Any, Protocol

from pooler import config as cfg
from pooler.config import Config, DatabaseConfig, PoolMode
from pooler.core.hosts import HostChooser
from pooler.core.ledger import Ledger
from pooler.core.parameters import TrackedParameters
from pooler.core.stats import PoolStats

#: What PgBouncer says (and caches for server_login_retry) when it cannot reach Postgres, or Postgres
#: does not finish the login within server_connect_timeout; our own detail goes in DETAIL.
CONNECT_FAILED = "connect failed"
CONNECT_TIMEOUT = "connect timeout"
#: server_check_query's value meaning "send an empty query" (PgBouncer's default and spelling).
EMPTY_CHECK_QUERY = "<empty>"


class ServerState(enum.IntEnum):
    CONNECTING = 0
    LOGIN = 1
    IDLE = 2
    ACTIVE = 3
    BUSY = 4  # running the pooler's own query (reset, health check, rollback) with no client linked
    CLOSED = 5
    BEING_CANCELED = 6  # done, but a cancel sent for its last client's query is still on its way: not reused


# The states the pool's moves compare with on every transaction, bound once (C statics under Cython, pool.pxd).
_LOGIN = ServerState.LOGIN
_IDLE = ServerState.IDLE
_ACTIVE = ServerState.ACTIVE
_BUSY = ServerState.BUSY
_CLOSED = ServerState.CLOSED
_BEING_CANCELED = ServerState.BEING_CANCELED


class PoolServer(Protocol):
    """A server connection as the pool sees it."""

    state: ServerState
    client: Any  # the linked client: its concrete type is the shells' business (see PoolClient.server)
    ledger: Ledger
    direct: bool
    stale: bool
    created_at: float
    last_used: float
    params: dict[str, str]
    reading_paused: bool
    cancels_in_flight: int

    def close(self, reason: str) -> None: ...

    def run_internal(self, sql: str) -> None: ...

    def resume_reading(self) -> None: ...


class PoolClient(Protocol):
    """A client connection as the pool sees it."""

    server: Any  # the linked server (the pool pairs them in link/unlink)
    waiting: bool
    wait_started: float
    startup_params: dict[str, str]

    def linked(self, server: Any, now: float) -> None:
        """Start on ``server`` (align parameters, send what is held): called by the shells on a client that a
        release returned (see ``Pool.link``), never by the pool."""
        ...

    def welcome(self, server_params: dict[str, str]) -> None: ...

    def login_failed(self, fields: dict[str, str]) -> None: ...

    def server_lost(self, server: Any) -> None: ...

    def fatal(self, sqlstate: str, message: str, *, hint: str | None = None, detail: str | None = None) -> None: ...


class PoolHost(Protocol):
    """What a pool needs from the process: the config, the clock, pooler-wide caps and a way to open servers."""

    config: Config
    clock: Callable[[], float]
    parameters: TrackedParameters

    def open_server(self, pool: Pool, params: dict[str, str], *, direct: bool) -> PoolServer: ...

    def may_open_server(self, pool: Pool) -> bool: ...

    def server_gone(self, pool: Pool) -> None: ...

    def room_wanted_by_other_pool(self, pool: Pool) -> bool: ...

    def cancel_server(self, server: PoolServer) -> None: ...

    def pooler_error(self, client: Any, sqlstate: str, message: str) -> None: ...


class Pool:
    """Servers and waiting clients of one (database entry, upstream user) pair.

    It sees connections only through ``PoolServer``/``PoolClient``. Not generic in their concrete types
    (which would let the shells above read their own fields back without a cast) because Cython compiles
    this class to a C type with typed fields (see pool.pxd), and a C type cannot derive from ``Generic``.
    """

    __slots__ = (
        "capacity",
        "check_delay",
        "check_query",
        "connect_failed",
        "connecting",
        "credentials",
        "db",
        "direct_servers",
        "host",
        "hosts",
        "idle",
        "lifetime",
        "login_error",
        "login_error_until",
        "max_db_connections",
        "max_user_connections",
        "min_size",
        "mode",
        "paused",
        "reserve_active",
        "reserve_size",
        "round_robin",
        "servers",
        "size",
        "stats",
        "user",
        "waiting",
        "welcome",
        "welcome_waiters",
    )

    def __init__(
        self, host: PoolHost, db: DatabaseConfig, user: str, credentials: tuple[str | None, tuple[bytes, bytes] | None]
    ) -> None:
        self.host = host
        self.db = db
        self.user = user
        self.credentials = credentials
        self.idle: list[PoolServer] = []
        self.servers: set[PoolServer] = set()
        self.direct_servers: set[PoolServer] = set()
        self.waiting: collections.deque[PoolClient] = collections.deque()
        self.welcome_waiters: list[PoolClient] = []
        self.connecting = 0
        self.connect_failed = False  # the last login failed (load_balance_hosts = disable moves on)
        self.hosts = HostChooser()  # where the next server goes, with a host list (host=a,b)
        self.stats = PoolStats()
        self.welcome: dict[str, str] | None = None
        self.login_error: dict[str, str] | None = None
        self.login_error_until = 0.0
        self.reserve_active = False
        self.capacity = 0  # set by _set_reserve (through refresh)
        self.paused = False  # PAUSE / shutdown: released servers close, none open (pooler.runtime.control sets it)
        self.mode = PoolMode.TRANSACTION
        self.size = 0
        self.reserve_size = 0
        self.min_size = 0
        self.lifetime = 0.0
        self.round_robin = False
        self.check_query: str | None = None  # server_check_query as sent ("" for <empty>); None: no checks
        self.check_delay = 0.0
        # max_db_connections / max_user_connections for this pool (0: no cap), kept as fields like the sizes:
        # a release asks the process whether another pool wants the server only when a cap exists.
        self.max_db_connections = 0
        self.max_user_connections = 0
        self.refresh()

    def refresh(self) -> None:
        """Re-read the sizes and mode from the current config (at creation and on reload).

        ``mode`` is read live by the clients of this pool: a RELOAD that changes a pool's mode applies to
        its connected clients from their next transaction on (a client linked in session mode keeps its
        server until it disconnects, as it was promised at login).
        """
        config = self.host.config
        self.mode = cfg.effective_pool_mode(config, self.db, self.user)
        self.size = cfg.effective_pool_size(config, self.db, self.user)
        self.reserve_size = cfg.effective_reserve_pool_size(config, self.db, self.user)
        self.min_size = cfg.effective_min_pool_size(config, self.db, self.user)
        self.lifetime = cfg.effective_server_lifetime(config, self.db)
        self.round_robin = config.settings.server_round_robin
        query = config.settings.server_check_query
        self.check_query = None if not query else "" if query == EMPTY_CHECK_QUERY else query
        self.check_delay = config.settings.server_check_delay
        self.max_db_connections = cfg.effective_max_db_connections(config, self.db)
        self.max_user_connections = cfg.effective_max_user_connections(config, self.user)
        self._set_reserve(self.reserve_active)

    @property
    def dbname(self) -> str:
        return self.db.dbname or self.db.name

    def _set_reserve(self, active: bool) -> None:
        """The one place ``reserve_active`` changes, and with it ``capacity``: how many servers this pool may
        have now (its size, plus the reserve while that is active), kept as a field for the hot path."""
        self.reserve_active = active
        self.capacity = self.size + (self.reserve_size if active else 0)

    # --- state: the one place it changes ------------------------------------------------------------

    def _change_state(self, server: PoolServer, state: ServerState) -> None:
        """Move a server to ``state``, keeping the idle stack in step (the common case pops its top)."""
        if server.state == _IDLE and state != _IDLE:
            idle = self.idle
            if idle and idle[-1] is server:
                idle.pop()
            elif idle and idle[0] is server:
                idle.pop(0)
            else:
                idle.remove(server)
        elif state == _IDLE:
            self.idle.append(server)
        server.state = state

    def server_connecting(self, server: PoolServer) -> None:
        self._change_state(server, _LOGIN)

    def server_closing(self, server: PoolServer) -> ServerState:
        """The server closes: it leaves every list at once, so it is never handed out; returns where it was."""
        previous = server.state
        if previous != _CLOSED:
            self._change_state(server, _CLOSED)
        return previous

    def begin_internal(self, server: PoolServer, sql: str) -> None:
        """Run the pooler's own query (reset, check, rollback) on a server no client holds."""
        self._change_state(server, _BUSY)
        server.run_internal(sql)

    def link(self, client: PoolClient, server: PoolServer) -> None:
        """Pair a client with a server. Only that: the pool starts no traffic. Whoever asked (``request``, or a
        release that hands the server on) returns the pair, and the shell tells the client (``linked``: align
        parameters, send what it holds) once its own callback's work is done, so that no release runs another
        client's data path from inside the pool."""
        if server.state != _ACTIVE:
            self._change_state(server, _ACTIVE)
        client.server = server
        server.client = client

    @staticmethod
    def unlink(client: PoolClient, server: PoolServer) -> None:
        server.client = None
        client.server = None
        if server.reading_paused:  # paused for the client's slow reading: the next client must not inherit that
            server.resume_reading()

    def close_idle(self, reason: str, count: int | None = None) -> int:
        """Close up to ``count`` idle servers (all of them by default), oldest first; returns how many."""
        closed = 0
        idle = self.idle
        while idle and (count is None or closed < count):
            server = idle[0]
            server.close(reason)  # leaves the stack through server_closing
            if idle and idle[0] is server:  # a server that was closed already: never loop on it
                idle.pop(0)
            closed += 1
        return closed

    # --- clients ----------------------------------------------------------------------------------

    def welcome_client(self, client: PoolClient) -> None:
        """Finish a client's login once the pool knows the server's parameters."""
        if self.welcome is not None:
            client.welcome(self.welcome)
            return
        if self.fast_fail():
            client.login_failed(self._cached_error())
            return
        client.wait_started = self.host.clock()
        self.welcome_waiters.append(client)
        if self.connecting == 0:
            self._grow(at_least=1)

    def request(self, client: PoolClient) -> PoolServer | None:
        """A client has a transaction to run: give it a server now (returned, linked: the caller starts the
        client's traffic) or queue it (None)."""
        idle = self.idle
        if idle:
            server = idle[0] if self.round_robin else idle[-1]
            if self.check_query is not None and self.host.clock() - server.last_used >= self.check_delay:
                # server_check_query first (PgBouncer's launch_recheck): the client is served by this server
                # once it answers, or by a new one if it turns out dead.
                self.waiting.append(client)
                self.begin_internal(server, self.check_query)
                return None
            self.link(client, server)
            return server
        if self.login_error is not None and self.fast_fail():
            client.waiting = False  # nothing could serve it before server_login_retry: fail fast
            client.login_failed(self._cached_error())
            return None
        self.waiting.append(client)
        if len(self.servers) < self.capacity:
            self._grow()  # below the pool size: open a server (a full pool only queues: the hot case)
        return None

    def remove_waiter(self, client: PoolClient) -> None:
        with contextlib.suppress(ValueError):
            self.waiting.remove(client)
        if client in self.welcome_waiters:
            self.welcome_waiters.remove(client)

    def release(self, server: PoolServer, *, touch: bool = True, now: float = 0.0) -> PoolClient | None:
        """A clean server is free: hand it to the first queued client, or park it.

        Returns the client it was handed to, linked but not yet told: the caller's shell calls its ``linked``
        once its own work is done (see ``link``); None when the server was parked, kept apart or closed.
        Every method below that may release a server returns that answer the same way.
        ``touch=False`` keeps its idle clock (after a health check, which is not use).
        """
        if server.state == _CLOSED:
            return None
        now = now or self.host.clock()
        if touch:
            server.last_used = now
        lifetime = self.lifetime
        if server.stale or self.paused or (lifetime and now - server.created_at > lifetime) or len(
            self.servers
        ) > self.capacity:
            server.close("paused" if self.paused else "reconnect" if server.stale else "server_lifetime")
            return None
        if server.cancels_in_flight:
            # A cancel for the last client's query may still reach Postgres: handed out now, it would cancel
            # the next client's query instead. Kept apart until its connection closes (PgBouncer does the same).
            self._change_state(server, _BEING_CANCELED)
            return None
        waiting = self.waiting
        while waiting:
            client = waiting.popleft()
            if client.waiting and client.server is None:
                self.link(client, server)
                return client
        if (self.max_db_connections or self.max_user_connections) and self.host.room_wanted_by_other_pool(self):
            server.close("closed to make room for another pool")
            return None
        if self.reserve_active:
            self._set_reserve(False)
        self._change_state(server, _IDLE)
        return None

    def server_ready(self, client: PoolClient, server: PoolServer, now: float) -> PoolClient | None:
        """The linked client's server owes nothing and is clean: unlink it and release it (see ``release``)."""
        server.client = None  # unlink(), inlined: this runs once per transaction
        client.server = None
        if server.reading_paused:
            server.resume_reading()
        return self.release(server, now=now)

    def client_left_server(
        self, client: PoolClient, server: PoolServer, mid_message: bool, reason: str
    ) -> PoolClient | None:
        """A linked client went away: return its server only once it is clean again (see ``release``)."""
        self.unlink(client, server)
        if server.state == ServerState.CLOSED:
            return None
        if server.direct:
            server.close("direct client left")
            return None
        ledger = server.ledger
        if mid_message or ledger.owes_anything():
            self.host.cancel_server(server)
            server.close(f"{reason} with a query in flight")
            return None
        if server.cancels_in_flight:
            # The cancel may still land on the rollback or reset about to run, which would leave the old
            # session's state behind: a server in that position is not worth keeping.
            server.close(f"{reason} with a cancel in flight")
            return None
        settings = self.host.config.settings
        reset = settings.server_reset_query if (
            self.mode == PoolMode.SESSION or settings.server_reset_query_always) else ""
        server.last_used = self.host.clock()
        if ledger.in_transaction():
            self.begin_internal(server, "ROLLBACK")
            if reset:
                server.run_internal(reset)
        elif reset:
            self.begin_internal(server, reset)
        else:
            return self.release(server)
        return None

    def cancel_sent(self, server: PoolServer) -> None:
        """A CancelRequest for the query on ``server`` is on its way to Postgres."""
        server.cancels_in_flight += 1

    def cancel_done(self, server: PoolServer) -> PoolClient | None:
        """Postgres closed the cancel's connection: the cancel has reached the backend (or never will); the
        server may be released now (see ``release``)."""
        server.cancels_in_flight -= 1
        if not server.cancels_in_flight and server.state == ServerState.BEING_CANCELED:
            return self.release(server, touch=False)
        return None

    def server_done_busy(self, server: PoolServer) -> PoolClient | None:
        """The pooler's own query on an unlinked server finished (see ``release``)."""
        if server.ledger.in_transaction():
            server.close("internal query left a transaction open")
            return None
        return self.release(server, touch=False)

    # --- servers ----------------------------------------------------------------------------------

    def open_direct(self, client: PoolClient) -> None:
        """Open a dedicated backend for a direct-endpoint client."""
        if not self.host.may_open_server(self):
            client.fatal("53300", f"too many connections for database \"{self.dbname}\" or user \"{self.user}\" "
                         "(max_db_connections / max_user_connections)",
                         hint="close other sessions or raise max_db_connections / max_user_connections")
            return
        params = {"user": self.user, "database": self.dbname, **client.startup_params}
        server = self.host.open_server(self, params, direct=True)
        self.direct_servers.add(server)
        server.client = client
        client.server = server

    def needs_room(self) -> bool:
        """Clients wait for a server that only a pooler-wide cap keeps this pool from opening."""
        want = max(len(self.waiting), 1 if self.welcome_waiters else 0)
        return want > self.connecting and len(self.servers) < self.capacity and not self._failing()

    def grow_for_waiters(self) -> None:
        """Retry opening servers for queued clients and for clients waiting for the pool's first login."""
        self._grow(at_least=1 if self.welcome_waiters else 0)

    def activate_reserve(self) -> None:
        """The oldest client has waited reserve_pool_timeout: the reserve may open now."""
        self._set_reserve(True)
        self._grow()

    def _failing(self) -> bool:
        return self.login_error is not None and self.host.clock() < self.login_error_until

    def fast_fail(self) -> bool:
        """A client arriving now gets the cached login error at once (PgBouncer's check_fast_fail).

        True only within ``server_login_retry`` of a failed login while the pool has no server that has
        logged in: nothing could serve the client before the next attempt. Clients already queued are not
        failed by this; they wait for the retry (the sweep calls grow_for_waiters), up to query_wait_timeout.
        """
        return len(self.servers) <= self.connecting and self._failing()

    def _cached_error(self) -> dict[str, str]:
        assert self.login_error is not None
        fields = dict(self.login_error)
        fields["M"] = f"server login has been failing, cached error: {fields.get('M', '')} (server_login_retry)"
        return fields

    def _grow(self, at_least: int = 0) -> None:
        """Open servers while clients wait for more than the logins already in flight."""
        if self._failing() or self.paused:
            return
        need = max(len(self.waiting), at_least) - self.connecting
        limit = self.capacity
        while need > 0 and len(self.servers) < limit and self.host.may_open_server(self):
            self._open()
            need -= 1

    def grow_to_minimum(self) -> None:
        if self.min_size and not self._failing() and not self.paused:
            while len(self.servers) < self.min_size and self.host.may_open_server(self):
                self._open()

    def shrink_to_capacity(self, reason: str) -> None:
        """Close idle servers beyond the pool's capacity (after a reload made it smaller)."""
        excess = len(self.servers) - self.capacity
        if excess > 0:
            self.close_idle(reason, excess)

    def _startup_params(self) -> dict[str, str]:
        params = {"user": self.user, "database": self.dbname}
        db = self.db
        if db.client_encoding:
            params["client_encoding"] = db.client_encoding
        if db.datestyle:
            params["DateStyle"] = db.datestyle
        if db.timezone:
            params["TimeZone"] = db.timezone
        return params

    def _open(self) -> None:
        server = self.host.open_server(self, self._startup_params(), direct=False)
        self.servers.add(server)
        self.connecting += 1

    def server_logged_in(self, server: PoolServer) -> PoolClient | None:
        """A server finished its login: the first one tells the clients waiting to be welcomed; then it is
        released (see ``release``), or runs connect_query first."""
        self.login_error = None
        self.connect_failed = False
        if server.direct:
            self._change_state(server, ServerState.ACTIVE)
            client = server.client
            if client is not None:
                client.welcome(server.params)
            return None
        self.connecting -= 1
        if self.welcome is None:
            self.welcome = dict(server.params)
            waiters, self.welcome_waiters = self.welcome_waiters, []
            for client in waiters:
                client.welcome(self.welcome)
        connect_query = self.db.connect_query
        if connect_query:
            self.begin_internal(server, connect_query)
            return None
        self._change_state(server, ServerState.BUSY)
        return self.release(server)

    def server_login_failed(self, server: PoolServer, fields: dict[str, str]) -> None:
        if server not in self.servers and server not in self.direct_servers:
            return
        detail = f" ({fields['D']})" if fields.get("D") else ""
        self.host.pooler_error(None, fields.get("C", "08006"), f"server login failed: {fields.get('M')}{detail}")
        if server.direct:
            self.direct_servers.discard(server)
            self.host.server_gone(self)
            client = server.client
            if client is not None:
                self.unlink(client, server)
                client.login_failed(fields)
            return
        self.servers.discard(server)
        self.connecting -= 1
        self.connect_failed = True  # as PgBouncer: any failed login moves load_balance_hosts = disable on
        self.login_error = fields
        self.login_error_until = self.host.clock() + self.host.config.settings.server_login_retry
        self.host.server_gone(self)
        if not refused_by_postgres(fields) or len(self.servers) > self.connecting:
            # Postgres unreachable, restarting (57P03), or other servers up: the queue stays, and the pool
            # retries after server_login_retry (up to query_wait_timeout), as PgBouncer does; a restart
            # shorter than that is invisible to the clients queued. Failing it would also turn one refused
            # login (Postgres out of slots, say) into an error for every waiting client.
            return
        # Postgres itself refused the login (a wrong password, a database that does not exist) and no server
        # is up: nothing will serve the queue, so it gets Postgres's error now (PgBouncer's kill_pool_logins).
        waiters = self.welcome_waiters + list(self.waiting)
        self.welcome_waiters = []
        self.waiting.clear()
        for client in waiters:
            client.waiting = False
            client.login_failed(fields)

    def server_closed(self, server: PoolServer) -> None:
        if server.direct:
            self.direct_servers.discard(server)
        elif server in self.servers:
            self.servers.discard(server)
        else:
            return
        client = server.client
        if client is not None:
            self.unlink(client, server)
            client.server_lost(server)
        self.host.server_gone(self)
        self.grow_for_waiters()


def refused_by_postgres(fields: dict[str, str]) -> bool:
    """The login failed with Postgres's own ErrorResponse (it carries a severity), other than 57P03
    ("the database system is starting up / shutting down"), which says: try again soon."""
    return "S" in fields and fields.get("C") != "57P03"


def login_failure_detail(pool: Pool | None) -> str | None:
    """DETAIL for a client that waited in vain: the pool's last failed server login, if any."""
    if pool is None or pool.login_error is None:
        return None
    error = pool.login_error
    text = error.get("M", "")
    if error.get("D"):
        text += f": {error['D']}"
    if error.get("H"):  # e.g. which server_tls_* setting to check after a failed TLS handshake
        text += f" ({error['H']})"
    return f"the last server login failed: {text}"
