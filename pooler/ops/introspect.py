"""What the pooler is doing right now, as rows: the one source for the admin console and the Prometheus collector.

Why computed on demand: the data path only keeps plain counters and the lists it needs to work (a pool's
servers, idle stack and queue; the set of clients). Every count an operator asks for (PgBouncer's
``cl_active``, ``sv_idle``, ``maxwait``…) is derived from those by one pass when SHOW or a scrape asks,
so nothing is maintained per transaction for the sake of observability. A pass is O(clients + servers):
microseconds for a local pooler's hundreds of connections.

The names and meanings follow PgBouncer's admin console (``doc/usage.md``), so that ``SHOW POOLS`` and
``pgbouncer_pools_*`` agree with each other and with what PgBouncer users expect:

* a client is ``active`` when logged in and not queued (linked to a server or idle between
  transactions; SHOW CLIENTS says ``idle`` for the latter), ``waiting`` when queued for a server (or,
  still logging in, for its pool's first server login);
* a server is ``active`` when linked to a client, ``idle`` when parked in its pool, ``tested`` while it
  runs the pooler's own query (reset, health check, rollback of a departed client), ``new`` while it
  connects and logs in.

Must be called on the event loop's thread: the structures read here are only consistent there.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pooler import config as cfg
from pooler.config import ADMIN_DATABASE, PoolMode, Settings
from pooler.core.pool import ServerState
from pooler.net.client import servers_of
from pooler.net.login import ClientState
from pooler.net.tls import describe_tls
from pooler.wire.auth import AuthType

if TYPE_CHECKING:
    from pooler.net.client import ClientConnection, ClientPool
    from pooler.net.server import ServerConnection
    from pooler.runtime.process import Pooler

#: The user PgBouncer shows for the admin console's own pool and database entry.
ADMIN_USER = "pgbouncer"

_SERVER_STATES = {
    ServerState.ACTIVE: "active",
    ServerState.IDLE: "idle",
    ServerState.BUSY: "tested",
    ServerState.CONNECTING: "new",
    ServerState.LOGIN: "new",
    ServerState.CLOSED: "closed",
    ServerState.BEING_CANCELED: "being_canceled",
}


# --- pools ------------------------------------------------------------------------------------------------


@dataclass(slots=True)
class PoolCounts:
    """One row of SHOW POOLS (cancel-request columns other than sv_being_canceled are 0: cancels are forwarded
    at once, on connections of their own)."""

    database: str
    user: str
    pool_mode: str
    cl_active: int = 0
    cl_waiting: int = 0
    sv_active: int = 0
    sv_idle: int = 0
    sv_used: int = 0
    sv_tested: int = 0
    sv_login: int = 0
    sv_being_canceled: int = 0
    maxwait: float = 0.0  # seconds the oldest queued client has waited


def server_state(server: ServerConnection) -> str:
    return _SERVER_STATES[server.state]


def client_state(client: ClientConnection) -> str:
    """SHOW CLIENTS' state: active (linked), idle (logged in, no server), waiting (queued)."""
    if client.waiting or client.state == ClientState.WELCOME:
        return "waiting"
    return "active" if client.server is not None else "idle"


def _count_server(row: PoolCounts, server: ServerConnection) -> None:
    state = server.state
    if state == ServerState.ACTIVE:
        row.sv_active += 1
    elif state == ServerState.IDLE:
        row.sv_idle += 1
    elif state == ServerState.BUSY:
        row.sv_tested += 1
    elif state in (ServerState.CONNECTING, ServerState.LOGIN):
        row.sv_login += 1
    elif state == ServerState.BEING_CANCELED:
        row.sv_being_canceled += 1


def pool_counts(pooler: Pooler) -> list[PoolCounts]:
    """SHOW POOLS: every pool, then the admin console's own pool (database and user ``pgbouncer``)."""
    now = pooler.clock()
    rows: list[PoolCounts] = []
    by_pool: dict[int, PoolCounts] = {}
    for pool in pooler.pools.values():
        row = PoolCounts(pool.db.name, pool.user, pool.mode.value)
        for server in servers_of(pool):
            _count_server(row, server)
        by_pool[id(pool)] = row
        rows.append(row)
    admin = PoolCounts(ADMIN_DATABASE, ADMIN_USER, PoolMode.STATEMENT.value)
    admin_sessions = pooler.admin_sessions
    for client in pooler.clients:
        state = client.state
        if state == ClientState.CLOSED:
            continue
        if client in admin_sessions:
            admin.cl_active += 1
            continue
        client_pool = client.pool
        counts = by_pool.get(id(client_pool)) if client_pool is not None else None
        if counts is None:
            continue  # still logging in: SHOW LISTS' login_clients
        if client.waiting or state == ClientState.WELCOME:
            counts.cl_waiting += 1
            waited = now - (client.wait_started if client.waiting else client.connected_at)
            counts.maxwait = max(counts.maxwait, waited)
        elif state == ClientState.READY:
            counts.cl_active += 1
    rows.append(admin)
    return rows


# --- databases and users ----------------------------------------------------------------------------------


@dataclass(slots=True)
class DatabaseRow:
    """One row of SHOW DATABASES."""

    name: str
    host: str | None
    port: int
    database: str
    force_user: str | None
    pool_size: int
    min_pool_size: int
    reserve_pool_size: int
    server_lifetime: int
    pool_mode: str | None
    max_connections: int
    current_connections: int
    max_client_connections: int
    current_client_connections: int
    paused: int
    disabled: int


def database_entries(pooler: Pooler) -> list[cfg.DatabaseConfig]:
    """Configured entries (not the ``*`` fallback itself), then the names the fallback has served."""
    entries = {name: db for name, db in pooler.config.databases.items() if name != "*"}
    for pool in pooler.pools.values():
        entries.setdefault(pool.db.name, pool.db)
    return list(entries.values())


def database_rows(pooler: Pooler) -> list[DatabaseRow]:
    config = pooler.config
    s = config.settings
    clients_per_db: dict[str, int] = {}
    for client in pooler.clients:
        if client.state != ClientState.CLOSED and client.database:
            clients_per_db[client.database] = clients_per_db.get(client.database, 0) + 1
    rows: list[DatabaseRow] = []
    for db in database_entries(pooler):
        rows.append(DatabaseRow(
            name=db.name,
            host=db.host,
            port=db.port,
            database=db.dbname or db.name,
            force_user=db.user,
            pool_size=db.pool_size if db.pool_size is not None else s.default_pool_size,
            min_pool_size=db.min_pool_size if db.min_pool_size is not None else s.min_pool_size,
            reserve_pool_size=db.reserve_pool_size if db.reserve_pool_size is not None else s.reserve_pool_size,
            server_lifetime=int(s.server_lifetime),
            pool_mode=db.pool_mode.value if db.pool_mode is not None else None,
            max_connections=cfg.effective_max_db_connections(config, db),
            current_connections=pooler.db_servers[db.name],
            max_client_connections=0,
            current_client_connections=clients_per_db.get(db.name, 0),
            paused=int(pooler.paused or db.name in pooler.paused_dbs),
            disabled=int(db.name in pooler.disabled_dbs),
        ))
    rows.append(DatabaseRow(
        name=ADMIN_DATABASE, host=None, port=pooler.ports.get("pooled", s.listen_port), database=ADMIN_DATABASE,
        force_user=ADMIN_USER, pool_size=2, min_pool_size=0, reserve_pool_size=0,
        server_lifetime=int(s.server_lifetime),
        pool_mode=PoolMode.STATEMENT.value, max_connections=0, current_connections=0, max_client_connections=0,
        current_client_connections=clients_per_db.get(ADMIN_DATABASE, 0), paused=0, disabled=0,
    ))
    return rows


@dataclass(slots=True)
class UserRow:
    """One row of SHOW USERS (pool_size / reserve_pool_size are text: empty when not overridden)."""

    name: str
    pool_size: str
    reserve_pool_size: str
    pool_mode: str | None
    max_user_connections: int
    current_connections: int
    max_user_client_connections: int
    current_client_connections: int


def user_rows(pooler: Pooler) -> list[UserRow]:
    """Users from [users], the userlist, the pools and the connected clients."""
    config = pooler.config
    names: set[str] = set(config.users) | set(pooler.userlist)
    names.update(pool.user for pool in pooler.pools.values())
    clients_per_user: dict[str, int] = {}
    for client in pooler.clients:
        if client.state != ClientState.CLOSED and client.user:
            names.add(client.user)
            clients_per_user[client.user] = clients_per_user.get(client.user, 0) + 1
    rows: list[UserRow] = []
    for name in sorted(names):
        entry = config.users.get(name)
        rows.append(UserRow(
            name=name,
            pool_size=str(entry.pool_size) if entry and entry.pool_size is not None else "",
            reserve_pool_size=str(entry.reserve_pool_size) if entry and entry.reserve_pool_size is not None else "",
            pool_mode=entry.pool_mode.value if entry and entry.pool_mode is not None else None,
            max_user_connections=cfg.effective_max_user_connections(config, name),
            current_connections=pooler.user_servers[name],
            max_user_client_connections=0,
            current_client_connections=clients_per_user.get(name, 0),
        ))
    return rows


def lists(pooler: Pooler) -> list[tuple[str, int]]:
    """SHOW LISTS: (list, items). Nothing is kept in free lists, and there is no DNS cache or peer."""
    used_clients = login_clients = 0
    for client in pooler.clients:
        if client.state == ClientState.CLOSED:
            continue
        used_clients += 1
        if client.state in (ClientState.STARTUP, ClientState.AUTH):
            login_clients += 1
    used_servers = sum(len(p.servers) + len(p.direct_servers) for p in pooler.pools.values())
    return [
        ("databases", len(database_entries(pooler)) + 1),  # + the admin console's
        ("users", len(user_rows(pooler))),
        ("peers", 0),
        ("pools", len(pooler.pools) + 1),
        ("peer_pools", 0),
        ("free_clients", 0),
        ("used_clients", used_clients),
        ("login_clients", login_clients),
        ("free_servers", 0),
        ("used_servers", used_servers),
        ("dns_names", 0),
        ("dns_zones", 0),
        ("dns_queries", 0),
        ("dns_pending", 0),
    ]


# --- clients and servers ----------------------------------------------------------------------------------


@dataclass(slots=True)
class ConnectionRow:
    """One row of SHOW CLIENTS / SHOW SERVERS (PgBouncer's socket columns)."""

    type: str
    user: str
    database: str
    replication: str
    state: str
    addr: str
    port: int
    local_addr: str
    local_port: int
    connect_time: str
    request_time: str
    wait: int
    wait_us: int
    close_needed: int
    ptr: str
    link: str
    remote_pid: int
    tls: str
    application_name: str
    prepared_statements: int
    id: int


def _split_address(address: object) -> tuple[str, int]:
    if isinstance(address, tuple) and len(address) >= 2:
        return str(address[0]), int(address[1])
    return "unix", 0


def _timestamp(wall: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(wall))


def client_rows(pooler: Pooler) -> list[ConnectionRow]:
    """Logged-in clients (those still authenticating are only counted, as in PgBouncer)."""
    now = pooler.clock()
    wall_offset = time.time() - now
    rows: list[ConnectionRow] = []
    for client in sorted(pooler.clients, key=lambda c: c.id):
        if client.state in (ClientState.STARTUP, ClientState.AUTH, ClientState.CLOSED):
            continue
        transport = client.transport
        peer = transport.get_extra_info("peername") if transport is not None else None
        local = transport.get_extra_info("sockname") if transport is not None else None
        addr, port = _split_address(peer)
        local_addr, local_port = _split_address(local)
        waited = now - client.wait_started if client.waiting else 0.0
        server = client.server
        rows.append(ConnectionRow(
            type="C", user=client.user, database=client.database, replication="none", state=client_state(client),
            addr=addr, port=port, local_addr=local_addr, local_port=local_port,
            connect_time=_timestamp(client.connected_at + wall_offset),
            request_time=_timestamp(client.last_active + wall_offset),
            wait=int(waited), wait_us=int((waited % 1) * 1_000_000), close_needed=0,
            ptr=f"{id(client):#x}", link=f"{id(server):#x}" if server is not None else "", remote_pid=0,
            tls=describe_tls(transport),
            application_name=client.params.get("application_name", ""),
            prepared_statements=len(client.statements), id=client.id,
        ))
    return rows


def server_rows(pooler: Pooler) -> list[ConnectionRow]:
    now = pooler.clock()
    wall_offset = time.time() - now
    ids = pooler.server_ids
    live: set[ServerConnection] = set()
    rows: list[ConnectionRow] = []
    for pool in pooler.pools.values():
        for server in servers_of(pool):
            live.add(server)
            rows.append(_server_row(pooler, pool, server, wall_offset, ids))
    for gone in [s for s in ids if s not in live]:
        del ids[gone]  # ids are handed out on first sight and forgotten once the server is gone
    return rows


def _server_row(pooler: Pooler, pool: ClientPool, server: ServerConnection, wall_offset: float,
                ids: dict[ServerConnection, int]) -> ConnectionRow:
    server_id = ids.get(server)
    if server_id is None:
        server_id = ids[server] = pooler.next_server_id()
    transport = server.transport
    peer = transport.get_extra_info("peername") if transport is not None else None
    local = transport.get_extra_info("sockname") if transport is not None else None
    addr, port = _split_address(peer)
    local_addr, local_port = _split_address(local)
    if addr == "unix":
        addr, port = pool.db.host or "unix", pool.db.port
    client = server.client
    return ConnectionRow(
        type="S", user=pool.user, database=pool.db.name, replication="none", state=server_state(server),
        addr=addr, port=port, local_addr=local_addr, local_port=local_port,
        connect_time=_timestamp(server.created_at + wall_offset),
        request_time=_timestamp(max(server.last_used, server.request_started) + wall_offset),
        wait=0, wait_us=0, close_needed=int(server.stale),
        ptr=f"{id(server):#x}", link=f"{id(client):#x}" if client is not None else "",
        remote_pid=server.key[0] if server.key else 0, tls=describe_tls(transport),
        application_name=client.params.get("application_name", "") if client is not None else "",
        prepared_statements=len(server.statements.prepared), id=server_id,
    )


# --- statistics ------------------------------------------------------------------------------------------


@dataclass(slots=True)
class Totals:
    """PgBouncer's per-database statistics. Times in seconds here (the console shows µs).

    As averages (``Totals.average``): counts and bytes per second, times per transaction / query /
    server assignment, like PgBouncer's ``avg_*``.
    """

    server_assignment_count: int = 0
    xact_count: int = 0
    query_count: int = 0
    received: int = 0
    sent: int = 0
    xact_time: float = 0.0
    query_time: float = 0.0
    wait_time: float = 0.0
    client_parse_count: int = 0
    server_parse_count: int = 0
    bind_count: int = 0
    client_login_count: int = 0

    @classmethod
    def of_pool(cls, pool: ClientPool, logins: int) -> Totals:
        s = pool.stats
        return cls(s.server_assignment_count, s.xact_count, s.query_count, s.received, s.sent, s.xact_hist.total,
                   s.query_hist.total, s.wait_hist.total, s.client_parse_count, s.server_parse_count, s.bind_count,
                   logins)

    def add(self, other: Totals) -> None:
        for f in dataclasses.fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    @staticmethod
    def sum(items: Iterable[Totals]) -> Totals:
        total = Totals()
        for item in items:
            total.add(item)
        return total

    def average(self, older: Totals, seconds: float) -> Totals:
        """Rates and mean durations between ``older`` and this snapshot, ``seconds`` apart."""
        if seconds <= 0:
            return Totals()

        def rate(now: int, before: int) -> int:
            return int((now - before) / seconds)

        queries = self.query_count - older.query_count
        xacts = self.xact_count - older.xact_count
        assignments = self.server_assignment_count - older.server_assignment_count
        return Totals(
            server_assignment_count=rate(self.server_assignment_count, older.server_assignment_count),
            xact_count=rate(self.xact_count, older.xact_count),
            query_count=rate(self.query_count, older.query_count),
            received=rate(self.received, older.received),
            sent=rate(self.sent, older.sent),
            xact_time=(self.xact_time - older.xact_time) / xacts if xacts > 0 else 0.0,
            query_time=(self.query_time - older.query_time) / queries if queries > 0 else 0.0,
            wait_time=(self.wait_time - older.wait_time) / assignments if assignments > 0 else 0.0,
            client_parse_count=rate(self.client_parse_count, older.client_parse_count),
            server_parse_count=rate(self.server_parse_count, older.server_parse_count),
            bind_count=rate(self.bind_count, older.bind_count),
            client_login_count=rate(self.client_login_count, older.client_login_count),
        )


def pool_totals(pooler: Pooler) -> dict[tuple[str, str], Totals]:
    """Current totals of every pool, keyed like ``Pooler.pools``."""
    logins = pooler.login_counts
    return {key: Totals.of_pool(pool, logins.get(key, 0)) for key, pool in pooler.pools.items()}


def by_database(pooler: Pooler, per_pool: dict[tuple[str, str], Totals]) -> dict[str, Totals]:
    """Sum per-pool totals into per-database ones, in first-seen order (SHOW STATS rows)."""
    out: dict[str, Totals] = {}
    for key, totals in per_pool.items():
        pool = pooler.pools.get(key)
        name = pool.db.name if pool is not None else key[0]
        out.setdefault(name, Totals()).add(totals)
    return out


# --- settings ---------------------------------------------------------------------------------------------


def format_setting(value: object) -> str:
    """A setting as SHOW CONFIG prints it: PgBouncer's 1/0 for booleans, plain seconds for durations."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    if isinstance(value, PoolMode | AuthType):
        return value.value
    return str(value)


def config_rows(settings: Settings) -> list[tuple[str, str, str, str]]:
    """SHOW CONFIG: (key, value, default, changeable) for every setting, sorted by key."""
    defaults = Settings()
    rows = []
    for f in sorted(dataclasses.fields(Settings), key=lambda f: f.name):
        rows.append((f.name, format_setting(getattr(settings, f.name)), format_setting(getattr(defaults, f.name)),
                     "no" if f.name in cfg.RESTART_ONLY_SETTINGS else "yes"))
    return rows
