"""A pool: the servers of one (database, user) pair and the clients queued for them.

Theory of operation. Idle servers sit on a stack (LIFO, so the warmest backend is reused and the
coldest ones age out under ``server_idle_timeout``; ``server_round_robin`` makes it a queue). A
client that needs a server takes the top one, or joins a FIFO queue; the pool then opens servers
while the queue is longer than the logins in flight, up to ``pool_size`` (plus ``reserve_pool_size``
once the oldest client has waited ``reserve_pool_timeout``), and only while the pooler-wide caps
``max_db_connections`` / ``max_user_connections`` allow. A released server goes straight to the head
of the queue, so a queued client never waits for a wakeup.

A server comes back to the pool only clean: a client that leaves mid-transaction gets its server
rolled back first, one that leaves mid-query gets it cancelled and closed.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from typing import TYPE_CHECKING

from pooler import config as cfg
from pooler.config import DatabaseConfig, PoolMode
from pooler.core.stats import PoolStats
from pooler.net.server import ServerConnection, ServerState
from pooler.net.tls import connect_server
from pooler.wire import messages as pq
from pooler.wire.auth import ServerAuth

if TYPE_CHECKING:
    from pooler.net.client import ClientConnection
    from pooler.runtime.process import Pooler


class Pool:
    """Servers and waiting clients of one (database entry, upstream user) pair."""

    __slots__ = (
        "connecting",
        "credentials",
        "db",
        "direct_servers",
        "idle",
        "lifetime",
        "login_error",
        "login_error_until",
        "min_size",
        "mode",
        "paused",
        "pooler",
        "reserve_active",
        "reserve_size",
        "servers",
        "size",
        "stats",
        "user",
        "waiting",
        "welcome",
        "welcome_waiters",
    )

    def __init__(
        self, pooler: Pooler, db: DatabaseConfig, user: str, credentials: tuple[str | None, tuple[bytes, bytes] | None]
    ) -> None:
        self.pooler = pooler
        self.db = db
        self.user = user
        self.credentials = credentials
        self.idle: list[ServerConnection] = []
        self.servers: set[ServerConnection] = set()
        self.direct_servers: set[ServerConnection] = set()
        self.waiting: collections.deque[ClientConnection] = collections.deque()
        self.welcome_waiters: list[ClientConnection] = []
        self.connecting = 0
        self.stats = PoolStats()
        self.welcome: dict[str, str] | None = None
        self.login_error: dict[str, str] | None = None
        self.login_error_until = 0.0
        self.reserve_active = False
        self.paused = False  # PAUSE / shutdown: released servers close, none open (pooler.ops.control sets it)
        self.mode = PoolMode.TRANSACTION
        self.size = 0
        self.reserve_size = 0
        self.min_size = 0
        self.lifetime = 0.0
        self.refresh()

    def refresh(self) -> None:
        """Re-read the sizes and mode from the current config (at creation and on reload)."""
        config = self.pooler.config
        self.mode = cfg.effective_pool_mode(config, self.db, self.user)
        self.size = cfg.effective_pool_size(config, self.db, self.user)
        self.reserve_size = cfg.effective_reserve_pool_size(config, self.db, self.user)
        self.min_size = cfg.effective_min_pool_size(config, self.db, self.user)
        self.lifetime = config.settings.server_lifetime

    @property
    def dbname(self) -> str:
        return self.db.dbname or self.db.name

    def _now(self) -> float:
        return self.pooler.clock()

    # --- clients ----------------------------------------------------------------------------------

    def welcome_client(self, client: ClientConnection) -> None:
        """Finish a client's login once the pool knows the server's parameters."""
        if self.welcome is not None:
            client.welcome(self.welcome)
            return
        if self._failing() and not self.servers:
            client.login_failed(self._cached_error())
            return
        self.welcome_waiters.append(client)
        if self.connecting == 0:
            self._grow(at_least=1)

    def request(self, client: ClientConnection) -> None:
        """A client has a transaction to run: give it a server now or queue it."""
        idle = self.idle
        if idle:
            server = idle.pop(0) if self.pooler.config.settings.server_round_robin else idle.pop()
            client.link(server, client.wait_started)
            return
        if self.login_error is not None and not self.servers and self._failing():
            client.waiting = False  # nothing could serve it before server_login_retry: fail fast
            client.login_failed(self._cached_error())
            return
        self.waiting.append(client)
        if len(self.servers) < self.size + (self.reserve_size if self.reserve_active else 0):
            self._grow()  # below the pool size: open a server (a full pool only queues: the hot case)

    def remove_waiter(self, client: ClientConnection) -> None:
        with contextlib.suppress(ValueError):
            self.waiting.remove(client)
        if client in self.welcome_waiters:
            self.welcome_waiters.remove(client)

    def release(self, server: ServerConnection, *, touch: bool = True, now: float = 0.0) -> None:
        """A clean server is free: hand it to the first queued client, or park it.

        ``touch=False`` keeps its idle clock (after a health check, which is not use).
        """
        if server.state == ServerState.CLOSED:
            return
        now = now or self._now()
        if touch:
            server.last_used = now
        lifetime = self.lifetime
        if server.stale or self.paused or (lifetime and now - server.created_at > lifetime) or len(
            self.servers
        ) > self.size + (self.reserve_size if self.reserve_active else 0):
            server.close("paused" if self.paused else "reconnect" if server.stale else "server_lifetime")
            return
        waiting = self.waiting
        while waiting:
            client = waiting.popleft()
            if client.waiting and client.server is None:
                client.link(server, now)
                return
        if self.pooler.room_wanted_by_other_pool(self):
            server.close("closed to make room for another pool")
            return
        self.reserve_active = False
        server.state = ServerState.IDLE
        self.idle.append(server)

    def client_left_server(self, server: ServerConnection, mid_message: bool, reason: str) -> None:
        """A linked client went away: return its server only once it is clean again."""
        if server.state == ServerState.CLOSED:
            return
        if server.direct:
            server.close("direct client left")
            return
        if mid_message or server.pending or server.unsynced or server.copy_in or server.swallow:
            self.pooler.cancel_server(server)
            server.close(f"{reason} with a query in flight")
            return
        settings = self.pooler.config.settings
        reset = settings.server_reset_query if (
            self.mode == PoolMode.SESSION or settings.server_reset_query_always) else ""
        server.last_used = self._now()
        if server.tx_status != pq.TX_IDLE or reset:
            server.state = ServerState.BUSY
            if server.tx_status != pq.TX_IDLE:
                server.run_internal("ROLLBACK")
            if reset:
                server.run_internal(reset)
            return
        self.release(server)

    def server_done_busy(self, server: ServerConnection) -> None:
        """The pooler's own query on an unlinked server finished."""
        if server.tx_status != pq.TX_IDLE:
            server.close("internal query left a transaction open")
            return
        self.release(server, touch=False)

    # --- servers ----------------------------------------------------------------------------------

    def open_direct(self, client: ClientConnection) -> None:
        """Open a dedicated backend for a direct-endpoint client."""
        if not self.pooler.may_open_server(self):
            client.fatal("53300", f"too many connections for database \"{self.dbname}\" or user \"{self.user}\" "
                         "(max_db_connections / max_user_connections)",
                         hint="close other sessions or raise max_db_connections / max_user_connections")
            return
        params = {"user": self.user, "database": self.dbname, **client.startup_params}
        server = self._open(params, direct=True)
        server.client = client
        client.server = server

    def needs_room(self) -> bool:
        """Clients wait for a server that only a pooler-wide cap keeps this pool from opening."""
        want = max(len(self.waiting), 1 if self.welcome_waiters else 0)
        limit = self.size + (self.reserve_size if self.reserve_active else 0)
        return want > self.connecting and len(self.servers) < limit and not self._failing()

    def grow_for_waiters(self) -> None:
        """Retry opening servers for queued clients and for clients waiting for the pool's first login."""
        self._grow(at_least=1 if self.welcome_waiters else 0)

    def _failing(self) -> bool:
        return self.login_error is not None and self._now() < self.login_error_until

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
        limit = self.size + (self.reserve_size if self.reserve_active else 0)
        while need > 0 and len(self.servers) < limit and self.pooler.may_open_server(self):
            self._open(self._startup_params())
            need -= 1

    def grow_to_minimum(self) -> None:
        if self.min_size and not self._failing() and not self.paused:
            while len(self.servers) < self.min_size and self.pooler.may_open_server(self):
                self._open(self._startup_params())

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

    def _open(self, params: dict[str, str], *, direct: bool = False) -> ServerConnection:
        password, keys = self.credentials
        server = ServerConnection(self, params, ServerAuth(self.user, password, keys), direct=direct)
        if direct:
            self.direct_servers.add(server)
        else:
            self.servers.add(server)
            self.connecting += 1
        self.pooler.server_opened(self)
        asyncio.get_running_loop().create_task(self._connect(server))
        return server

    async def _connect(self, server: ServerConnection) -> None:
        loop = asyncio.get_running_loop()
        host = self.db.host
        port = self.db.port
        timeout = self.pooler.config.settings.server_connect_timeout or None
        where = f"{host or 'local socket'}:{port}"
        try:
            async with asyncio.timeout(timeout):
                if host and not host.startswith("/"):
                    await connect_server(server, host, port, self.pooler.server_tls)
                else:
                    path = f"{host or '/tmp'}/.s.PGSQL.{port}"
                    await loop.create_unix_connection(lambda: server, path)
        except (OSError, TimeoutError) as exc:
            reason = "timed out (server_connect_timeout)" if isinstance(exc, TimeoutError) else (
                exc.strerror or str(exc))
            server.login_error = {
                "C": "08006",
                "M": f"could not connect to server {where}: {reason}",
                "H": "is Postgres running and accepting connections there? check host/port in [databases]",
            }
            server.close(server.login_error["M"])
            return
        if server.state == ServerState.CLOSED and server.transport is not None:
            server.transport.close()

    def server_logged_in(self, server: ServerConnection) -> None:
        self.login_error = None
        if server.direct:
            client = server.client
            server.state = ServerState.ACTIVE
            if client is not None:
                client.welcome(server.params)
            return
        self.connecting -= 1
        if self.welcome is None:
            self.welcome = dict(server.params)
            waiters, self.welcome_waiters = self.welcome_waiters, []
            for client in waiters:
                client.welcome(self.welcome)
        connect_query = self.db.connect_query
        if connect_query:
            server.run_internal(connect_query)
            return
        self.release(server)

    def server_login_failed(self, server: ServerConnection, fields: dict[str, str]) -> None:
        if server not in self.servers and server not in self.direct_servers:
            return
        self.pooler.pooler_error(None, fields.get("C", "08006"), f"server login failed: {fields.get('M')}")
        if server.direct:
            self.direct_servers.discard(server)
            self.pooler.server_gone(self)
            client = server.client
            server.client = None
            if client is not None:
                client.server = None
                client.login_failed(fields)
            return
        self.servers.discard(server)
        self.connecting -= 1
        self.pooler.server_gone(self)
        self.login_error = fields
        self.login_error_until = self._now() + self.pooler.config.settings.server_login_retry
        if self.servers:
            # Other servers are up (or still logging in): the queue is served by them. Failing it would turn
            # one refused login (Postgres out of slots, say) into an error for every waiting client.
            return
        waiters = self.welcome_waiters + list(self.waiting)
        self.welcome_waiters = []
        self.waiting.clear()
        for client in waiters:
            client.waiting = False
            client.login_failed(fields)

    def server_closed(self, server: ServerConnection, previous: ServerState) -> None:
        if server.direct:
            self.direct_servers.discard(server)
        elif server in self.servers:
            self.servers.discard(server)
        else:
            return
        if server in self.idle:
            self.idle.remove(server)
        client = server.client
        if client is not None:
            server.client = None
            client.server_lost(server)
        self.pooler.server_gone(self)
        self.grow_for_waiters()

    def close_idle(self, count: int = 1) -> int:
        """Close up to ``count`` idle servers (to make room elsewhere); returns how many were closed."""
        closed = 0
        while self.idle and closed < count:
            self.idle.pop(0).close("closed to make room for another pool")
            closed += 1
        return closed
