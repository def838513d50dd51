"""The janitor: every timeout, enforced by one periodic pass (PgBouncer's src/janitor.c).

Why one pass and not a timer per connection: a timer per idle client would cost memory at ten thousand
clients, and most timeouts are seconds long. The tick adapts to the smallest timeout configured (a fifth
of it, between 50 ms and 1 s), so each limit is enforced within a fifth of itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection, Mapping
from typing import Protocol

from pooler import config as cfg
from pooler.config import Config
from pooler.core.pool import CONNECT_TIMEOUT, ServerState, login_failure_detail
from pooler.log import log
from pooler.net.client import ClientConnection, ClientPool, servers_of
from pooler.net.login import ClientState
from pooler.runtime.autodb import AutodbJanitor
from pooler.wire import messages as pq

#: PgBouncer's notice to a client queued longer than query_wait_notify (src/janitor.c).
QUERY_WAIT_NOTICE = pq.notice_response("No server connection available in postgres backend, client being queued")


class Sweepable(Protocol):
    def sweep(self, now: float) -> None: ...


class JanitorHost(Protocol):
    """What the janitor reads and acts on (``pooler.runtime.process.Pooler`` provides it)."""

    config: Config
    clock: Callable[[], float]
    autodb: AutodbJanitor

    @property
    def clients(self) -> Collection[ClientConnection]: ...

    @property
    def pools(self) -> Mapping[tuple[str, str], ClientPool]: ...

    @property
    def http_connections(self) -> Collection[Sweepable]: ...

    @property
    def paused_dbs(self) -> Collection[str]: ...

    @property
    def wait_notified(self) -> dict[ClientConnection, float]: ...

    def forget_pool(self, key: tuple[str, str]) -> None: ...


class Janitor:
    """Enforces client, transaction, server and pool timeouts, and frees idle automatic databases."""

    def __init__(self, host: JanitorHost) -> None:
        self.host = host

    def tick(self) -> float:
        s = self.host.config.settings
        timeouts = [t for t in (
            s.query_wait_timeout, s.query_timeout, s.idle_transaction_timeout, s.client_idle_timeout,
            s.transaction_timeout, s.query_wait_notify, s.server_login_retry,
            s.client_login_timeout, s.server_connect_timeout, s.reserve_pool_timeout, s.server_idle_timeout,
            s.server_lifetime, s.autodb_idle_timeout) if t > 0]
        timeouts += [t for u in self.host.config.users.values() for t in (
            u.query_timeout, u.query_wait_timeout, u.idle_transaction_timeout, u.client_idle_timeout,
            u.transaction_timeout) if t]
        timeouts += [d.server_lifetime for d in self.host.config.databases.values() if d.server_lifetime]
        return max(0.05, min([1.0, *(t / 5 for t in timeouts)]))

    async def run_forever(self) -> None:
        while True:
            await asyncio.sleep(self.tick())
            try:
                self.sweep()
            except Exception:
                log.exception("sweep failed")

    def sweep(self) -> None:
        """Enforce every timeout once; called periodically."""
        now = self.host.clock()
        s = self.host.config.settings
        in_use: set[ClientPool] = set()
        for client in list(self.host.clients):
            self._sweep_client(client, now)
            if client.pool is not None:
                in_use.add(client.pool)
        for conn in list(self.host.http_connections):
            conn.sweep(now)
        for pool in list(self.host.pools.values()):
            self._sweep_pool(pool, now, s)
        host = self.host
        for key in host.autodb.expired(host.pools, declared=host.config.databases, paused=host.paused_dbs,
                                       timeout=s.autodb_idle_timeout, now=now, in_use=in_use):
            host.forget_pool(key)

    def _sweep_client(self, client: ClientConnection, now: float) -> None:
        s = self.host.config.settings
        state = client.state
        if state in (ClientState.STARTUP, ClientState.AUTH, ClientState.WELCOME):
            pool = client.pool
            if (state == ClientState.WELCOME and pool is not None and pool.welcome is None
                    and client in pool.welcome_waiters):
                self._sweep_welcome_waiter(client, pool, now)
            elif s.client_login_timeout and now - client.connected_at > s.client_login_timeout:
                client.fatal("08P01", "client_login_timeout", hint="the client did not finish logging in in time")
            return
        if state != ClientState.READY:
            return
        user = self.host.config.users.get(client.user)
        server = client.server
        if client.waiting:
            waited = now - client.wait_started
            limit = cfg.effective_query_wait_timeout(self.host.config, client.user)
            query_limit = cfg.effective_query_timeout(self.host.config, client.user)
            if query_limit and waited > query_limit:  # PgBouncer counts the wait into query_timeout
                client.fatal("08P01", "query_timeout", detail=login_failure_detail(client.pool),
                             hint="the query waited for a server longer than query_timeout")
            elif limit and waited > limit:
                client.fatal("08P01", "query_wait_timeout", detail=login_failure_detail(client.pool),
                             hint="all servers of the pool stayed busy; raise default_pool_size or "
                             "query_wait_timeout, or shorten transactions")
            elif s.query_wait_notify and waited > s.query_wait_notify and (
                    self.host.wait_notified.get(client) != client.wait_started):
                self.host.wait_notified[client] = client.wait_started  # once per wait
                client.write(QUERY_WAIT_NOTICE)
            return
        if server is None:
            limit = user.client_idle_timeout if user and user.client_idle_timeout is not None else (
                s.client_idle_timeout)
            if limit and now - client.last_active > limit and not client.direct:
                client.fatal("08P01", "client_idle_timeout")
            return
        if server.state != ServerState.ACTIVE:
            return
        # PgBouncer's words (src/janitor.c): "query timeout", "idle transaction timeout", "transaction timeout".
        if server.ledger.pending or client.sending_partial():
            # A message stalled halfway counts as a query in flight: it holds the server all the same.
            limit = cfg.effective_query_timeout(self.host.config, client.user)
            since = server.request_started if server.ledger.pending else client.held_since
            if limit and now - since > limit:
                client.fatal("08P01", "query timeout", hint="the query ran longer than query_timeout")
                return
        elif server.ledger.in_transaction():
            limit = cfg.effective_idle_transaction_timeout(self.host.config, client.user)
            if limit and now - server.last_used > limit:
                client.fatal("08P01", "idle transaction timeout",
                             hint="the transaction stayed open and idle longer than idle_transaction_timeout")
                return
        else:
            return
        limit = cfg.effective_transaction_timeout(self.host.config, client.user)
        if limit and now - server.xact_started > limit:
            client.fatal("08P01", "transaction timeout",
                         hint="the transaction stayed open longer than transaction_timeout")

    def _sweep_welcome_waiter(self, client: ClientConnection, pool: ClientPool, now: float) -> None:
        """A client logged in but its pool has never reached Postgres: PgBouncer's two limits apply."""
        s = self.host.config.settings
        detail = login_failure_detail(pool)
        if s.client_login_timeout and now - client.connected_at > s.client_login_timeout:
            client.fatal("08P01", "client_login_timeout (server down)", detail=detail,
                         hint="Postgres did not accept a login for this pool within client_login_timeout")
            return
        limit = cfg.effective_query_wait_timeout(self.host.config, client.user)
        if limit and now - client.wait_started > limit:
            client.fatal("08P01", "query_wait_timeout", detail=detail,
                         hint="Postgres did not accept a login for this pool within query_wait_timeout")

    def _sweep_pool(self, pool: ClientPool, now: float, s: cfg.Settings) -> None:
        connect_timeout = s.server_connect_timeout
        for server in servers_of(pool, direct=False):
            logging_in = server.state in (ServerState.CONNECTING, ServerState.LOGIN)
            if logging_in and connect_timeout and now - server.connect_started > connect_timeout:
                server.login_error = {"C": "08006", "M": CONNECT_TIMEOUT, "D": "the login to Postgres took longer "
                                      f"than server_connect_timeout ({connect_timeout:g}s)"}
                server.close("server_connect_timeout")
        if (pool.waiting and pool.reserve_size and not pool.reserve_active
                and now - pool.waiting[0].wait_started >= s.reserve_pool_timeout):
            pool.activate_reserve()
        if pool.waiting or pool.welcome_waiters:
            pool.grow_for_waiters()  # clients wait and the pool has room: it must be trying to open servers
        if s.server_fast_close and pool.mode == cfg.PoolMode.SESSION:
            for server in servers_of(pool, direct=False):
                client = server.client
                if server.stale and client is not None and server.state == ServerState.ACTIVE and server.is_clean():
                    # PgBouncer's words; the client goes too, so it notices its session ended.
                    client.fatal("08P01", "database configuration changed",
                                 hint="server_fast_close: a RECONNECT or RELOAD replaced this session's server")
        keep = pool.min_size
        for idle in list(pool.idle):
            idle_for = now - idle.last_used
            too_old = pool.lifetime and now - idle.created_at > pool.lifetime
            too_idle = s.server_idle_timeout and idle_for > s.server_idle_timeout and len(pool.servers) > keep
            if too_old or too_idle or idle.stale:
                idle.close("server_lifetime" if too_old else "server_idle_timeout")
        pool.grow_to_minimum()


