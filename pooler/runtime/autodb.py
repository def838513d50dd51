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

from collections.abc import Collection, Mapping

from pooler.core.pool import Pool

PoolKey = tuple[str, str]


class AutodbJanitor:
    """When each automatically created database became inactive (and nothing else): it decides which pools
    to free; the process frees them (``Pooler.forget_pool``)."""

    __slots__ = ("idle_since",)

    def __init__(self) -> None:
        self.idle_since: dict[str, float] = {}

    def expired(
        self,
        pools: Mapping[PoolKey, Pool],
        *,
        declared: Collection[str],
        paused: Collection[str],
        timeout: float,
        now: float,
        in_use: set[Pool],
    ) -> list[PoolKey]:
        """The pools to free now; ``in_use``: the pools some client is logged in to."""
        if timeout <= 0:
            self.idle_since.clear()
            return []
        auto: dict[str, list[tuple[PoolKey, Pool]]] = {}
        for key, pool in pools.items():
            if pool.db.name not in declared:
                auto.setdefault(pool.db.name, []).append((key, pool))
        for name in [n for n in self.idle_since if n not in auto]:
            del self.idle_since[name]
        expired: list[PoolKey] = []
        for name, entries in auto.items():
            if name in paused or any(_active(pool, in_use) for _, pool in entries):
                self.idle_since.pop(name, None)
                continue
            since = self.idle_since.setdefault(name, now)
            if now - since > timeout:
                del self.idle_since[name]
                expired.extend(key for key, _ in entries)
        return expired


def _active(pool: Pool, in_use: set[Pool]) -> bool:
    return bool(pool in in_use or pool.servers or pool.direct_servers or pool.waiting or pool.welcome_waiters)
