"""``autodb_idle_timeout``: free the pools of databases matched by ``*`` once unused that long.

Why: every made-up database name a client logs in to through the ``*`` entry creates a pool, with its
stats and metrics series; without a bound, 2,000 such names cost 2,000 pools forever. As PgBouncer
(src/janitor.c), an automatically created database is inactive while none of its pools has a client
or a server; inactive for ``autodb_idle_timeout`` seconds, it is freed whole: its pools, their
statistics (SHOW STATS rows, login counts) and so their metrics series (the stats period's snapshots
drop them at its next tick).
A paused database is kept. Called from the periodic sweep, which already visits every client.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pooler.net.client import ClientPool as Pool
    from pooler.runtime.process import Pooler


class AutodbJanitor:
    """When each automatically created database became inactive (and nothing else)."""

    __slots__ = ("idle_since",)

    def __init__(self) -> None:
        self.idle_since: dict[str, float] = {}

    def sweep(self, pooler: Pooler, now: float, in_use: set[Pool]) -> None:
        """``in_use``: the pools some client is logged in to."""
        timeout = pooler.config.settings.autodb_idle_timeout
        if timeout <= 0:
            self.idle_since.clear()
            return
        declared = pooler.config.databases
        auto: dict[str, list[tuple[tuple[str, str], Pool]]] = {}
        for key, pool in pooler.pools.items():
            if pool.db.name not in declared:
                auto.setdefault(pool.db.name, []).append((key, pool))
        for name in [n for n in self.idle_since if n not in auto]:
            del self.idle_since[name]
        for name, entries in auto.items():
            if name in pooler.paused_dbs or any(_active(pool, in_use) for _, pool in entries):
                self.idle_since.pop(name, None)
                continue
            since = self.idle_since.setdefault(name, now)
            if now - since > timeout:
                del self.idle_since[name]
                for key, pool in entries:
                    free_pool(pooler, key, pool)


def _active(pool: Pool, in_use: set[Pool]) -> bool:
    return bool(pool in in_use or pool.servers or pool.direct_servers or pool.waiting or pool.welcome_waiters)


def free_pool(pooler: Pooler, key: tuple[str, str], pool: Pool) -> None:
    """Forget an empty pool and everything counted for it."""
    del pooler.pools[key]
    pooler.login_counts.pop(key, None)
    if pooler.db_servers.get(pool.db.name) == 0:
        del pooler.db_servers[pool.db.name]
    if pooler.user_servers.get(pool.user) == 0 and not any(p.user == pool.user for p in pooler.pools.values()):
        del pooler.user_servers[pool.user]
