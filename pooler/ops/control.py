"""Operating a running pooler: PAUSE/RESUME, DISABLE/ENABLE, RECONNECT, KILL, RELOAD, SET and the shutdown modes.

The admin console and the signal handlers both land here, so ``SIGINT`` and ``SHUTDOWN WAIT_FOR_SERVERS``
are one code path, as are ``SIGHUP`` and ``RELOAD``.

Theory of operation. Pausing is a flag on each pool (``Pool.paused``) that the pool checks only where
a server would be handed out or opened: a released server is closed instead of parked or passed on,
and no server is opened for waiting clients. Clients in a transaction finish it (their server stays
linked until the transaction ends); everyone else queues until RESUME. The waits (PAUSE, WAIT_CLOSE,
the shutdown drains) poll the pools every 50 ms: they are rare, and polling keeps the data path free
of notification hooks.

Shutdown modes, as PgBouncer's signals:

* ``WAIT_FOR_CLIENTS`` (SIGTERM): stop accepting (listening sockets close at once), keep serving the
  connected clients, exit when the last one has left.
* ``WAIT_FOR_SERVERS`` (SIGINT): stop accepting, let every transaction in flight finish, disconnect each
  client as soon as it holds no open transaction (``pooler is shutting down``), exit when none is left.
  No transaction is cut in half.
* ``IMMEDIATE`` (SIGQUIT, a second signal, or SHUTDOWN): close everything now.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING

from pooler import config as cfg
from pooler.config import ADMIN_DATABASE, ConfigError
from pooler.log import log
from pooler.net.login import ClientState
from pooler.runtime.process import Pooler, ShutdownMode

if TYPE_CHECKING:
    from pooler.net.client import ClientPool

#: How often the waits (PAUSE, WAIT_CLOSE, shutdown drains) look at the pools again.
POLL_INTERVAL = 0.05


class ControlError(Exception):
    """A command that cannot be carried out; ``str()`` is the message for the console."""


# --- which pools ----------------------------------------------------------------------------------------


def check_database(pooler: Pooler, name: str) -> None:
    """Refuse the admin database and names that neither the config nor the ``*`` fallback knows."""
    if name == ADMIN_DATABASE:
        raise ControlError(f"cannot do that to the admin database: {name}")
    known = name in pooler.config.databases or any(p.db.name == name for p in pooler.pools.values())
    if not known and cfg.find_database(pooler.config, name) is None:
        raise ControlError(f"no such database: {name}")


def pools_of(pooler: Pooler, database: str | None) -> list[ClientPool]:
    return [p for p in pooler.pools.values() if database is None or p.db.name == database]


def apply_pause(pooler: Pooler) -> None:
    """Bring every pool's ``paused`` flag in line with the pooler's state; act on the transitions."""
    for pool in list(pooler.pools.values()):
        paused = pooler.is_paused(pool.db.name)
        if paused == pool.paused:
            continue
        pool.paused = paused
        if paused:
            pool.close_idle("paused")
        else:
            pool.grow_for_waiters()


def _server_count(pooler: Pooler, database: str | None) -> int:
    return sum(len(p.servers) for p in pools_of(pooler, database))


async def _until(condition: Callable[[], bool]) -> None:
    while not condition():
        await asyncio.sleep(POLL_INTERVAL)


# --- commands -------------------------------------------------------------------------------------------


def _mark_paused(pooler: Pooler, database: str | None) -> None:
    """PAUSE and KILL both start here: the whole pooler, or one database, hands out no more servers."""
    if pooler.paused:
        raise ControlError("already suspended/paused")
    if database is None:
        pooler.paused = True
    else:
        check_database(pooler, database)
        pooler.paused_dbs.add(database)


def pause(pooler: Pooler, database: str | None) -> None:
    """Stop handing out servers (all databases, or one); servers close as their transactions end."""
    _mark_paused(pooler, database)
    log.info("pause", database=database or "*")
    apply_pause(pooler)


async def wait_paused(pooler: Pooler, database: str | None) -> None:
    """PAUSE returns once every server of the paused pools is closed."""
    await _until(lambda: _server_count(pooler, database) == 0)


def resume(pooler: Pooler, database: str | None) -> None:
    if database is None:
        if pooler.shutdown_mode is not None:
            raise ControlError("pooler is shutting down")
        if not pooler.paused and not pooler.paused_dbs:
            raise ControlError("pooler is not paused/suspended")
        pooler.paused = False
        pooler.paused_dbs.clear()
    else:
        if database not in pooler.paused_dbs:
            raise ControlError(f"database {database} is not paused")
        pooler.paused_dbs.discard(database)
    log.info("resume", database=database or "*")
    apply_pause(pooler)


def disable(pooler: Pooler, database: str) -> None:
    """Refuse new client logins to ``database``; connected clients stay."""
    check_database(pooler, database)
    pooler.disabled_dbs.add(database)
    log.info("disable", database=database)


def enable(pooler: Pooler, database: str) -> None:
    check_database(pooler, database)
    pooler.disabled_dbs.discard(database)
    log.info("enable", database=database)


def reconnect(pooler: Pooler, database: str | None) -> None:
    """Close every server once it is released (idle ones now); new ones open as needed."""
    if database is not None:
        check_database(pooler, database)
    for pool in pools_of(pooler, database):
        for server in list(pool.servers):
            server.stale = True
        pool.close_idle("reconnect")
        pool.grow_for_waiters()
    log.info("reconnect", database=database or "*")


async def wait_close(pooler: Pooler, database: str | None) -> None:
    """Wait until no server of ``database`` (or any) is still marked to be closed (RECONNECT, RELOAD)."""
    if database is not None:
        check_database(pooler, database)
    await _until(lambda: not any(s.stale for p in pools_of(pooler, database) for s in p.servers))


def kill(pooler: Pooler, database: str | None) -> None:
    """Drop every client and server of ``database`` (or all) now, and pause it until RESUME."""
    _mark_paused(pooler, database)
    apply_pause(pooler)
    killed = 0
    for client in list(pooler.clients):
        if client in pooler.admin_sessions or client.state == ClientState.CLOSED:
            continue
        if database is None or client.database == database:
            client.fatal("57P01", "database killed by the admin console (KILL)",
                         hint="the database stays paused until RESUME")
            killed += 1
    for pool in pools_of(pooler, database):
        for server in (*pool.servers, *pool.direct_servers):
            server.close("KILL")
    log.info("kill", database=database or "*", clients=killed)


def kill_client(pooler: Pooler, client_id: int) -> None:
    for client in pooler.clients:
        if client.id == client_id and client.state != ClientState.CLOSED:
            log.info("kill client", client=client_id, remote=client.remote, database=client.database,
                     user=client.user)
            client.fatal("57P01", "admin forced disconnect (KILL_CLIENT)")
            return
    raise ControlError("client not found")


def reload(pooler: Pooler) -> None:
    """Re-read the config the pooler was started from; an invalid one is refused (ConfigError) and the
    running config stays."""
    loader = pooler.config_loader
    if loader is None:
        raise ControlError("nothing to reload: this pooler was not started from a config file or environment")
    new = loader()
    if not new.databases:
        raise ConfigError(new.source, "databases", "no database is configured; add a [databases] entry or set "
                          "DATABASE_URL")
    pooler.reload(new)


def set_setting(pooler: Pooler, key: str, value: str) -> str | None:
    """SET key = value: validated as if read from a file, applied like a reload (until the next RELOAD).

    A PgBouncer setting pooler does not act on is accepted, as PgBouncer accepts it; the returned text
    (for a NOTICE) says it is ignored and why. None when the setting was applied.
    """
    name = key.strip().lower()
    why = cfg.PGBOUNCER_IGNORED_SETTINGS.get(name)
    if why is not None:
        return f"{name} is ignored by pooler: {why}"
    if name in cfg.RESTART_ONLY_SETTINGS:
        raise ControlError(f"{name} cannot be changed at run time; restart the pooler")
    try:
        new = cfg.replace_settings(pooler.config, **{name: value})
    except ConfigError as exc:
        raise ControlError(f"SET failed: {exc.setting}: {exc.problem}") from None
    pooler.reload(new)
    return None


# --- shutdown -------------------------------------------------------------------------------------------


def _app_clients(pooler: Pooler) -> list[object]:
    return [c for c in pooler.clients if c.state != ClientState.CLOSED and c not in pooler.admin_sessions]


def _disconnect_idle_clients(pooler: Pooler) -> None:
    """WAIT_FOR_SERVERS: every client that holds no open transaction goes now (nothing of its is cut)."""
    for client in list(pooler.clients):
        if client in pooler.admin_sessions or client.state == ClientState.CLOSED:
            continue
        server = client.server
        if client.state != ClientState.READY or server is None or server.is_clean():
            client.fatal("57P01", "pooler is shutting down",
                         hint="the pooler stopped after the transactions in flight; reconnect to its replacement")


def start_shutdown(pooler: Pooler, mode: ShutdownMode) -> None:
    """Begin a shutdown in ``mode`` (signals, SHUTDOWN); ``pooler.finished`` is set when it is done."""
    pooler.spawn(shutdown(pooler, mode))


async def shutdown(pooler: Pooler, mode: ShutdownMode) -> None:
    """Stop the pooler in ``mode``; a second call (a second signal) makes it immediate.
    Sets ``pooler.finished`` when done."""
    if pooler.finished.is_set():
        return
    if mode == ShutdownMode.IMMEDIATE or pooler.shutdown_mode is not None:
        pooler.shutdown_mode = ShutdownMode.IMMEDIATE
        log.info("shutting down now", mode=ShutdownMode.IMMEDIATE.value, clients=len(_app_clients(pooler)))
        await pooler.stop()
        pooler.finished.set()
        return
    pooler.shutdown_mode = mode
    pooler.close_listeners()
    log.info("shutting down", mode=mode.value, clients=len(_app_clients(pooler)),
             waiting_for="clients to disconnect" if mode == ShutdownMode.WAIT_FOR_CLIENTS
             else "transactions in flight to finish")
    if mode == ShutdownMode.WAIT_FOR_SERVERS:
        apply_pause(pooler)
    while pooler.shutdown_mode == mode:
        if mode == ShutdownMode.WAIT_FOR_SERVERS:
            _disconnect_idle_clients(pooler)
        if not _app_clients(pooler):
            break
        await asyncio.sleep(POLL_INTERVAL)
    if pooler.shutdown_mode != mode:
        return  # escalated to IMMEDIATE by a second signal, which finishes the job
    await pooler.stop()
    log.info("shut down", mode=mode.value)
    pooler.finished.set()
