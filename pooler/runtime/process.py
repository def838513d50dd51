"""The pooler process: listeners, the pool registry, pooler-wide limits, cancel routing, timeouts.

Theory of operation. Connections are ``asyncio.Protocol`` objects driven by the event loop; nothing
here runs per message. A single periodic sweep enforces every timeout (a timer per connection would
cost memory per idle client), so the tick adapts to the smallest timeout that is configured.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import enum
import os
import secrets
import shutil
import socket
import ssl
import time
from collections.abc import Callable, Coroutine, Iterable
from typing import TYPE_CHECKING, Literal, Protocol

from pooler import config as cfg
from pooler.config import RESTART_ONLY_SETTINGS, Settings
from pooler.core.hosts import host_list
from pooler.core.parameters import TrackedParameters
from pooler.core.pool import Pool, PoolServer, ServerState
from pooler.core.prepared import StatementCache
from pooler.core.stats import error_kind
from pooler.log import configure_from_settings, log
from pooler.net.client import ClientConnection, ClientPool
from pooler.net.duck import as_protocol
from pooler.net.http import HttpConnection
from pooler.net.login import ClientState
from pooler.net.server import ServerConnection
from pooler.net.sockopts import tune_socket
from pooler.net.stream import SocketServer, listening_sockets
from pooler.net.tls import ClientTls, ServerTls
from pooler.runtime import tls, upstream
from pooler.runtime.autodb import AutodbJanitor
from pooler.runtime.client_limits import ClientLimits
from pooler.runtime.janitor import Janitor
from pooler.runtime.workers import SINGLE, WORKER_BITS, Worker
from pooler.wire import messages as pq
from pooler.wire.auth import AuthStep, ServerAuth, is_md5_secret, parse_scram_verifier
from pooler.wire.framing import MessageReader

if TYPE_CHECKING:
    from pooler.config import Config, DatabaseConfig


class ShutdownMode(enum.StrEnum):
    """PgBouncer's three ways to stop (see pooler.ops.control)."""

    IMMEDIATE = "immediate"
    WAIT_FOR_SERVERS = "wait_for_servers"
    WAIT_FOR_CLIENTS = "wait_for_clients"


class Listener(Protocol):
    """A listening door: asyncio's Server, or pooler.net.stream's SocketServer."""

    @property
    def sockets(self) -> tuple[socket.socket, ...]: ...

    def close(self) -> None: ...

    async def wait_closed(self) -> None: ...


class Service(Protocol):
    """Something that starts and stops with the pooler; ``start`` returns the port it listens on, if any."""

    name: str

    async def start(self) -> int | None: ...

    def close(self) -> None: ...


class Pooler:
    """Everything one pooler process serves."""

    def __init__(self, config: Config, worker: Worker = SINGLE) -> None:
        self.config = config
        self.worker = worker  # which of `workers` processes this is (pooler.runtime.workers)
        self.pools: dict[tuple[str, str], ClientPool] = {}
        self.clients: set[ClientConnection] = set()
        self.clients_by_key: dict[int, ClientConnection] = {}  # by pack_cancel_key
        self.http_connections: set[HttpConnection] = set()  # SQL over HTTP: swept, closed at stop
        self.db_servers: collections.Counter[str] = collections.Counter()
        self.user_servers: collections.Counter[str] = collections.Counter()
        self.userlist: dict[str, str] = {}
        self.parameters = TrackedParameters()
        self.auth_cache: dict[str, tuple[str | None, float]] = {}
        self.statements = StatementCache()  # protocol-level prepared statements, shared by every pool
        self.listeners: list[Listener] = []
        self.ports: dict[str, int] = {}
        self._client_seq = 0
        #: The clock of every timestamp, bound once (``asyncio.get_running_loop()`` costs a getpid() per call,
        #: and the data path reads the time several times per transaction). time.monotonic, not uvloop's
        #: loop.time(): that one is libuv's cached millisecond clock, which would put every sub-millisecond
        #: query in the latency histograms' first bucket; both cost ~45 ns a call.
        self.clock: Callable[[], float] = time.monotonic
        self._sweeper: asyncio.Task[None] | None = None
        # Operations (pooler.ops.control, the admin console, metrics): read by them, not by the data path.
        self.admin_sessions: set[ClientConnection] = set()
        self.paused = False
        self.paused_dbs: set[str] = set()
        self.disabled_dbs: set[str] = set()
        self.shutdown_mode: ShutdownMode | None = None
        self.finished = asyncio.Event()  # set once the pooler has shut down (any mode)
        self.config_loader: Callable[[], Config] | None = None  # what RELOAD / SIGHUP re-read
        self.error_counts: dict[str, int] = {}  # pooler_errors_total{kind}
        self.login_counts: dict[tuple[str, str], int] = {}  # SHOW STATS' client_login_count, per pool key
        self.server_ids: dict[ServerConnection, int] = {}  # SHOW SERVERS' id, handed out on first sight
        self._server_seq = 0
        self.wait_notified: dict[ClientConnection, float] = {}  # query_wait_notify: the wait each was told of
        self.client_limits = ClientLimits()  # max_db_client_connections / max_user_client_connections
        self.janitor = Janitor(self)  # every timeout, one periodic pass
        self.autodb = AutodbJanitor()  # frees pools of databases matched by "*" (autodb_idle_timeout)
        #: What the composition root (pooler.cli.assemble) plugs in: listeners of its own (metrics) and periodic
        #: work (the stats period) started and stopped with the pooler, and the admin console's entry.
        self.services: list[Service] = []
        self.on_admin_login: Callable[[ClientConnection], None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.tls, self.server_tls = self._read_tls(config)
        self._apply(config, self._read_userlist(config))

    # --- configuration ----------------------------------------------------------------------------

    @staticmethod
    def _read_userlist(config: Config) -> dict[str, str]:
        """The auth_file's users and the config's own; raises ConfigError (before anything is changed)."""
        userlist: dict[str, str] = {}
        if config.settings.auth_file:
            userlist.update((e.user, e.secret) for e in cfg.read_userlist(config.settings.auth_file))
        userlist.update((e.user, e.secret) for e in config.extra_userlist)
        return userlist

    @staticmethod
    def _read_tls(config: Config) -> tuple[ClientTls | None, ServerTls | None]:
        """TLS contexts towards clients and towards Postgres; raises ConfigError (nothing changed yet)."""
        return tls.client_tls(config.settings, config.source), tls.server_tls(config.settings, config.source)

    def _apply(self, config: Config, userlist: dict[str, str]) -> None:
        self.config = config
        self._tune_listeners(config.settings)  # the clients accepted from now on get the new TCP options
        self.parameters.track(config.settings.track_extra_parameters)
        self.userlist = userlist
        for pool in self.pools.values():
            db = cfg.find_database(config, pool.db.name)
            if db is not None and db != pool.db:
                self._retarget(pool, db)
            pool.refresh()

    def _retarget(self, pool: ClientPool, db: DatabaseConfig) -> None:
        """A reload changed the pool's [databases] entry: new server logins use the new entry (address,
        password, ...), and the servers opened with the old one are closed once free, as PgBouncer does."""
        old = pool.db
        pool.db = db
        credentials = self._server_credentials(db, pool.user, None)
        if credentials != (None, None) or old.password:
            pool.credentials = credentials  # (None, None): the next client's login supplies them
        for server in pool.servers:
            server.stale = True

    def reload(self, config: Config) -> None:
        """Swap in a new config; pools pick up new sizes, modes and [databases] entries, connected clients stay.

        Everything that can fail (reading the auth_file) happens before anything changes: a ConfigError leaves
        the running config whole. Settings that only apply at start (listening addresses and ports) keep their
        running values, with a warning.
        """
        old = self.config
        kept = {name: getattr(old.settings, name) for name in RESTART_ONLY_SETTINGS
                if getattr(config.settings, name) != getattr(old.settings, name)}
        if kept:
            log.warning("settings changed that take effect only at restart; keeping the running values",
                        settings=sorted(kept))
            config = dataclasses.replace(config, settings=dataclasses.replace(config.settings, **kept))
        userlist = self._read_userlist(config)
        self.tls, self.server_tls = self._read_tls(config)  # new handshakes use them; live connections keep theirs
        self._apply(config, userlist)
        for pool in list(self.pools.values()):
            pool.shrink_to_capacity("pool size reduced")
            if not pool.paused:
                pool.grow_for_waiters()
        changed = sorted(f.name for f in dataclasses.fields(config.settings)
                         if getattr(config.settings, f.name) != getattr(old.settings, f.name))
        s, o = config.settings, old.settings
        if (s.log_format, s.verbose, s.logfile) != (o.log_format, o.verbose, o.logfile):
            configure_from_settings(s)
        log.info("config reloaded", source=config.source, changed=changed,
                 databases_changed=config.databases != old.databases, users_changed=config.users != old.users)

    # --- lifecycle --------------------------------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        s = self.config.settings
        pooled = await self._listen(lambda: as_protocol(ClientConnection(self)), s.listen_addr, s.listen_port,
                                    plain_sockets=True)
        self.ports["pooled"] = pooled
        if s.direct_port:
            self.ports["direct"] = await self._listen(lambda: as_protocol(ClientConnection(self, direct=True)),
                                                      s.listen_addr, s.direct_port, plain_sockets=True)
        if s.http_port:
            self.ports["http"] = await self._listen(lambda: HttpConnection(self), s.listen_addr, s.http_port)
        if s.unix_socket_dir:
            path = f"{s.unix_socket_dir}/.s.PGSQL.{pooled}"
            server = await loop.create_unix_server(lambda: as_protocol(ClientConnection(self)), path,
                                                   backlog=s.listen_backlog)
            self.listeners.append(server)
            set_socket_file_access(path, s.unix_socket_mode, s.unix_socket_group)
        if self.worker.count > 1:  # cancels other workers received for our clients arrive here
            relay = await loop.create_unix_server(
                lambda: _CancelRelay(self), self.worker.cancel_socket(self.worker.index))
            self.listeners.append(relay)
        for service in self.services:
            try:
                port = await service.start()
            except OSError:
                self.close_listeners()
                raise
            if port is not None:
                self.ports[service.name] = port
        self._sweeper = loop.create_task(self.janitor.run_forever())
        for line in (*self.config.ignored, *tls.tls13_ciphers_warning(self.config.settings)):
            log.warning("config setting ignored", detail=line)

    async def _listen(self, factory: Callable[[], asyncio.BaseProtocol], host: str, port: int, *,
                      plain_sockets: bool = False) -> int:
        """Listen on ``host`` (a name, a comma-separated list, or ``*``) and ``port``; return the port.

        ``plain_sockets``: the Postgres-protocol doors, whose plaintext connections run on the compiled
        socket transport (pooler.net.stream); the others get the event loop's own transports."""
        loop = asyncio.get_running_loop()
        s = self.config.settings
        hosts: str | list[str] = [h.strip() for h in host.split(",")] if "," in host else host
        if host == "*":
            hosts = ["0.0.0.0", "::"]
        reuse_port = s.so_reuseport or s.workers > 1
        if plain_sockets:
            sockets = listening_sockets(hosts, port, backlog=s.listen_backlog, reuse_port=reuse_port)
            self.listeners.extend(SocketServer(loop, sock, factory) for sock in sockets)
        else:
            listener = await loop.create_server(factory, hosts, port, backlog=s.listen_backlog, reuse_address=True,
                                                reuse_port=reuse_port)
            self.listeners.append(listener)
            sockets = list(listener.sockets)
        bound = sockets[0].getsockname()[1]
        for sock in sockets:
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            tune_socket(sock, s)  # the connections it accepts inherit these (sockopts)
        return int(bound)

    def _tune_listeners(self, settings: Settings) -> None:
        """tcp_keepalive & co. on the listening sockets, which the connections they accept inherit (sockopts)."""
        for listener in self.listeners:
            for sock in listener.sockets:
                tune_socket(sock, settings)

    def close_listeners(self) -> None:
        """Stop accepting: the listening sockets (and the services' ports) close now, so the ports are free."""
        for listener in self.listeners:
            listener.close()
        for service in self.services:
            service.close()

    def is_paused(self, database: str) -> bool:
        """PAUSE (of all, or of ``database``) or a shutdown waiting for servers: hand out no servers."""
        return self.paused or database in self.paused_dbs or self.shutdown_mode == ShutdownMode.WAIT_FOR_SERVERS

    def spawn(self, coro: Coroutine[None, None, None]) -> None:
        """Run ``coro`` as a task of this pooler: cancelled by ``stop()``, never garbage-collected mid-run."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def stop(self) -> None:
        """Close listeners first (so the port is free at once), then every connection."""
        self.close_listeners()
        if self._sweeper is not None:
            self._sweeper.cancel()
        for task in list(self._tasks):
            if task is not asyncio.current_task():
                task.cancel()
        for conn in list(self.http_connections):
            conn.shutdown()
        for client in list(self.clients):
            if client.state == ClientState.READY and client.server is None:
                client.fatal("57P01", "pooler is shutting down")
            else:
                client.close()
        for pool in self.pools.values():
            for server in list(pool.servers) + list(pool.direct_servers):
                server.close("pooler shutting down")
        for listener in self.listeners:
            await listener.wait_closed()
        self.listeners.clear()

    # --- clients ------------------------------------------------------------------------------------

    def next_client_id(self) -> int:
        self._client_seq += 1
        return self._client_seq

    def next_server_id(self) -> int:
        self._server_seq += 1
        return self._server_seq

    def client_connected(self, client: ClientConnection) -> None:
        """Every accepted connection counts toward max_client_conn; the limit is checked at its startup packet."""
        self.clients.add(client)

    def over_client_limit(self) -> bool:
        """More clients than max_client_conn, counting the one asking (PgBouncer's rule)."""
        limit = self.config.settings.max_client_conn
        return bool(limit) and len(self.clients) > limit

    def admit_client(self, client: ClientConnection, db: DatabaseConfig) -> str | None:
        """max_db_client_connections / max_user_client_connections: PgBouncer's refusal text, or None."""
        return self.client_limits.admit(self.config, client, db)

    def client_disconnected(self, client: ClientConnection) -> None:
        if client not in self.clients:
            return
        self.clients.discard(client)
        self.wait_notified.pop(client, None)
        self.client_limits.release(client)
        if self.clients_by_key.get(client.key) is client:
            del self.clients_by_key[client.key]
        if self.config.settings.log_disconnections and client.user:
            log.info("disconnect", client=client.id, remote=client.remote, database=client.database,
                     user=client.user)

    def lookup_secret(self, user: str) -> str | None:
        secret = self.userlist.get(user)
        if secret is not None:
            return secret
        cached = self.auth_cache.get(user)
        if cached is not None and cached[1] > self.clock():
            return cached[0]
        return None

    def auth_query_enabled(self, db: DatabaseConfig) -> bool:
        return bool(db.auth_user or self.config.settings.auth_user)

    def auth_query_lookup(self, client: ClientConnection, db: DatabaseConfig, user: str) -> None:
        """Fetch an unknown user's secret with auth_query through auth_user, then resume the login."""
        asyncio.get_running_loop().create_task(self._auth_query(client, db, user))

    async def _auth_query(self, client: ClientConnection, db: DatabaseConfig, user: str) -> None:
        import asyncpg

        settings = self.config.settings
        auth_user = db.auth_user or settings.auth_user
        password = self.userlist.get(auth_user)
        if password is not None and (is_md5_secret(password) or parse_scram_verifier(password)):
            password = None
        if db.user == auth_user and db.password:
            password = db.password
        auth_db = self.auth_database(db)
        secret: str | None = None
        try:
            conn = await asyncpg.connect(
                host=[h or "/tmp" for h in host_list(auth_db.host)], port=auth_db.port, user=auth_user,
                password=password, database=auth_db.dbname or auth_db.name,
                timeout=settings.server_connect_timeout or 60.0, statement_cache_size=0,
                ssl=self._auth_query_ssl(auth_db))
            try:
                row = await conn.fetchrow(settings.auth_query, user)
            finally:
                await conn.close()
            if row is not None:
                secret = row[1]
        except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
            client.fatal("08006", f"auth_query through auth_user \"{auth_user}\" failed: {exc}",
                         hint="check auth_user's password in auth_file and that auth_query is valid")
            return
        self.auth_cache[user] = (secret, self.clock() + settings.auth_cache_ttl)
        if secret is None:
            client.fatal("08P01", "no such user")  # PgBouncer's words when auth_query finds no row
            return
        client.begin_auth(settings.auth_type, secret)

    def _auth_query_ssl(self, db: DatabaseConfig) -> ssl.SSLContext | Literal[False, "prefer"]:
        """asyncpg's ``ssl=`` for the auth_query connection: what server_tls_sslmode gives the pool's servers."""
        server_tls = self.server_tls
        if server_tls is None or server_tls.context is None or not db.host or db.host.startswith("/"):
            return False
        return server_tls.context if server_tls.required else "prefer"

    def auth_database(self, db: DatabaseConfig) -> DatabaseConfig:
        """Where auth_query runs: the [databases] entry named by auth_dbname (per database, else global),
        else the client's own database (PgBouncer's auth_dbname)."""
        name = db.auth_dbname or self.config.settings.auth_dbname
        if name:
            entry = cfg.find_database(self.config, name)
            if entry is not None:
                return entry
        return db

    def admin_login(self, client: ClientConnection) -> None:
        """A client authenticated to the virtual ``pgbouncer`` database (the admin console)."""
        if self.on_admin_login is None:
            client.fatal("08P01", "the admin console is not available in this process")
            return
        self.on_admin_login(client)

    def client_authenticated(self, client: ClientConnection, db: DatabaseConfig, step: AuthStep) -> None:
        """Route a logged-in client to its pool (and its own backend, on the direct endpoint)."""
        if self.disabled_dbs and db.name in self.disabled_dbs:
            client.fatal("08P01", f"database \"{db.name}\" is disabled",
                         hint="an admin ran DISABLE on it; ENABLE on the admin console lets clients in again")
            return
        if self.shutdown_mode == ShutdownMode.WAIT_FOR_SERVERS:
            client.fatal("57P01", "pooler is shutting down")
            return
        pool = self._pool_for(db, client.user, step)
        key = self._pool_key(db, pool.user)
        self.login_counts[key] = self.login_counts.get(key, 0) + 1
        client.pool = pool
        client.stats = pool.stats
        client.track_statements = (
            not client.direct and pool.mode != cfg.PoolMode.SESSION and self.config.settings.max_prepared_statements > 0
        )
        self.clients_by_key[client.key] = client
        if client.direct:
            pool.open_direct(client)
        else:
            pool.welcome_client(client)

    def _pool_for(self, db: DatabaseConfig, client_user: str, step: AuthStep) -> ClientPool:
        user = db.user or client_user
        key = self._pool_key(db, user)
        existing = self.pools.get(key)
        if existing is not None:
            if existing.credentials == (None, None):
                existing.credentials = self._server_credentials(db, user, step)
            return existing
        pool: ClientPool = Pool(self, db, user, self._server_credentials(db, user, step))
        pool.paused = self.is_paused(db.name)
        self.pools[key] = pool
        return pool

    @staticmethod
    def _pool_key(db: DatabaseConfig, user: str) -> tuple[str, str]:
        return (db.name if db.name != "*" else f"*{db.dbname}", user)

    def _server_credentials(
        self, db: DatabaseConfig, user: str, step: AuthStep | None
    ) -> tuple[str | None, tuple[bytes, bytes] | None]:
        """What the pooler logs in to Postgres with: the database entry's password, else the user's
        (``step``: the client login that created the pool; None on reload)."""
        if db.password:
            return db.password, None
        secret = self.userlist.get(user)
        if secret is not None and not parse_scram_verifier(secret):
            return secret, None  # plain, or an md5 hash (answers md5 requests only)
        if step is None or (db.user and db.user != user):
            return None, None
        return step.password, step.scram_keys

    def http_request(self, transport: asyncio.Transport, data: bytes) -> None:
        """The pooled port's first bytes were an HTTP request (SQL over HTTP or a WebSocket upgrade)."""
        HttpConnection.take_over(self, transport, data)

    def pooler_error(self, client: ClientConnection | None, sqlstate: str, message: str) -> None:
        kind = error_kind(sqlstate, message)
        self.error_counts[kind] = self.error_counts.get(kind, 0) + 1
        if self.config.settings.log_pooler_errors:
            if client is None:
                log.warning("pooler error", sqlstate=sqlstate, error=message)
            else:
                log.warning("pooler error", sqlstate=sqlstate, error=message, client=client.id,
                            remote=client.remote, database=client.database, user=client.user)

    # --- servers and limits -----------------------------------------------------------------------

    def may_open_server(self, pool: Pool) -> bool:
        """Pooler-wide caps. When one is reached, close an idle server of another pool to make room."""
        dbname = pool.db.name
        max_db, max_user = pool.max_db_connections, pool.max_user_connections
        if max_db and self.db_servers[dbname] >= max_db:
            return self._make_room(p for p in self.pools.values() if p.db.name == dbname and p is not pool)
        if max_user and self.user_servers[pool.user] >= max_user:
            return self._make_room(p for p in self.pools.values() if p.user == pool.user and p is not pool)
        return True

    def _make_room(self, pools: Iterable[ClientPool]) -> bool:
        for other in pools:
            if other.close_idle("closed to make room for another pool", 1):
                return False  # the count drops when the close is processed; the caller retries then
        return False

    def open_server(self, pool: Pool, params: dict[str, str], *, direct: bool) -> ServerConnection:
        """A new server for ``pool``, counted against the pooler-wide caps at once; it connects in the background."""
        password, keys = pool.credentials
        server = ServerConnection(pool, params, ServerAuth(pool.user, password, keys), direct=direct)
        self.db_servers[pool.db.name] += 1
        self.user_servers[pool.user] += 1
        settings = self.config.settings
        host = pool.hosts.choose(pool.db.host, pool.db.load_balance_hosts or settings.load_balance_hosts,
                                 last_connect_failed=pool.connect_failed)
        self.spawn(upstream.connect(server, pool.db, host, settings.server_connect_timeout, self.server_tls))
        return server

    def server_gone(self, pool: Pool) -> None:
        self.db_servers[pool.db.name] -= 1
        self.user_servers[pool.user] -= 1
        for other in self.pools.values():
            if (other.waiting or other.welcome_waiters) and other is not pool:
                other.grow_for_waiters()

    def room_wanted_by_other_pool(self, pool: Pool) -> bool:
        """True when a server of ``pool`` about to go idle should be closed instead: another pool has clients
        waiting and is held back by the max_db_connections / max_user_connections cap it shares with ``pool``
        (PgBouncer evicts an idle server for it)."""
        max_db, max_user = pool.max_db_connections, pool.max_user_connections
        db_full = bool(max_db) and self.db_servers[pool.db.name] >= max_db
        user_full = bool(max_user) and self.user_servers[pool.user] >= max_user
        if not (db_full or user_full):
            return False
        for other in self.pools.values():
            if other is pool or not ((db_full and other.db.name == pool.db.name)
                                     or (user_full and other.user == pool.user)):
                continue
            if other.needs_room():
                return True
        return False

    # --- cancel -------------------------------------------------------------------------------------

    def new_cancel_key(self) -> int:
        """A client's own BackendKeyData, packed (pq.pack_cancel_key): random, with this worker's index in the
        low bits of its process ID."""
        worker = self.worker
        return pq.pack_cancel_key((secrets.randbits(31 - WORKER_BITS) << WORKER_BITS) | worker.index,
                                  secrets.randbits(31))

    def cancel(self, key: tuple[int, int]) -> None:
        """A CancelRequest for one of our clients: forward it only to the server it is using now.

        With several workers the key may belong to another worker's client: relay it there.
        """
        owner = self.worker.owner_of(key)
        if owner != self.worker.index and owner < self.worker.count:
            self.spawn(self._relay_cancel(owner, key))
            return
        client = self.clients_by_key.get(pq.pack_cancel_key(*key))
        if client is None:
            return
        if client.waiting:
            client.cancel_queued_request()  # nothing runs yet: take it out of the queue
            return
        server = client.server
        if server is not None and (server.ledger.pending or server.state == ServerState.LOGIN):
            self.cancel_server(server)

    async def _relay_cancel(self, owner: int, key: tuple[int, int]) -> None:
        try:
            async with asyncio.timeout(self.config.settings.cancel_wait_timeout or None):
                _, writer = await asyncio.open_unix_connection(self.worker.cancel_socket(owner))
                writer.write(pq.cancel_request(*key))
                await writer.drain()
                writer.close()
                await writer.wait_closed()
        except (OSError, TimeoutError) as exc:
            log.warning("cancel relay failed", worker=owner, error=str(exc))

    def cancel_server(self, server: PoolServer) -> None:
        """Cancel the query running on ``server``; the server is not handed to anyone until Postgres has the cancel."""
        if not isinstance(server, ServerConnection) or server.key is None:
            return
        server.pool.cancel_sent(server)
        self.spawn(self._cancel(server, server.key))

    async def _cancel(self, server: ServerConnection, key: tuple[int, int]) -> None:
        db = server.pool.db
        try:
            await upstream.send_cancel(upstream.server_host(server, db), db.port, key,
                                       self.config.settings.cancel_wait_timeout)
        finally:
            handed_to = server.pool.cancel_done(server)
            if handed_to is not None:
                handed_to.linked(server, self.clock())

    def forget_pool(self, key: tuple[str, str]) -> None:
        """Forget an empty pool and everything counted for it (its SHOW STATS rows and metrics series go too)."""
        pool = self.pools.pop(key)
        self.login_counts.pop(key, None)
        if self.db_servers.get(pool.db.name) == 0:
            del self.db_servers[pool.db.name]
        if self.user_servers.get(pool.user) == 0 and not any(p.user == pool.user for p in self.pools.values()):
            del self.user_servers[pool.user]


def set_socket_file_access(path: str, mode: str, group: str) -> None:
    """``unix_socket_mode`` (octal) and ``unix_socket_group`` on the socket file, as PgBouncer sets them."""
    os.chmod(path, int(mode, 8))
    if group:
        try:
            shutil.chown(path, group=group)
        except LookupError:
            raise OSError(f"unix_socket_group: no such group: {group}") from None






class _CancelRelay(asyncio.Protocol):
    """A CancelRequest another worker received for one of our clients: 16 bytes, then the relay hangs up."""

    def __init__(self, pooler: Pooler) -> None:
        self.pooler = pooler
        self.reader = MessageReader(0)

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        try:
            packet = self.reader.next_startup_packet()
            if packet is None:
                return
            startup = pq.parse_startup_packet(packet)
        except pq.ProtocolViolationError:
            return  # only our own workers write here; anything else is dropped
        key = startup.cancel_key
        if key is not None and self.pooler.worker.owner_of(key) == self.pooler.worker.index:
            self.pooler.cancel(key)
