"""Every ``stats_period``: snapshot the pools' totals (for SHOW STATS' ``avg_*`` columns) and log a stats line.

PgBouncer's averages cover the time since the snapshot before the last one: at any moment they are
rates over the last one to two periods, and right after a tick exactly the last period, which is what
the ``stats`` log line reports.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from pooler.log import log
from pooler.net.login import ClientState
from pooler.ops.introspect import Totals, by_database, pool_totals

if TYPE_CHECKING:
    from pooler.runtime.process import Pooler


class StatsPeriod:
    """The two latest snapshots of every pool's totals, and when they were taken; a service of the pooler."""

    name = "stats_period"

    def __init__(self, pooler: Pooler) -> None:
        self.pooler = pooler
        now = pooler.clock()
        self.older: dict[tuple[str, str], Totals] = {}
        self.newer: dict[tuple[str, str], Totals] = {}
        self.older_stamp = now - 1.0  # as PgBouncer: the first averages are over one second
        self.newer_stamp = now

    def restart(self) -> None:
        """Re-anchor on the event loop's clock (the pooler's clock is only the loop's once started)."""
        now = self.pooler.clock()
        self.older_stamp, self.newer_stamp = now - 1.0, now

    def tick(self) -> None:
        current = pool_totals(self.pooler)
        self.older, self.newer = self.newer, current
        self.older_stamp, self.newer_stamp = self.newer_stamp, self.pooler.clock()

    def averages(self) -> dict[str, Totals]:
        """Per-database averages over the window ending now (SHOW STATS, SHOW STATS_AVERAGES)."""
        pooler = self.pooler
        seconds = pooler.clock() - self.older_stamp
        current = by_database(pooler, pool_totals(pooler))
        older = by_database(pooler, self.older)
        return {name: totals.average(older.get(name, Totals()), seconds) for name, totals in current.items()}

    def overall_average(self) -> Totals:
        seconds = self.pooler.clock() - self.older_stamp
        current = Totals.sum(pool_totals(self.pooler).values())
        return current.average(Totals.sum(self.older.values()), seconds)

    def log_line(self) -> None:
        """The ``stats`` event: the last period's rates and mean durations over all pools."""
        pooler = self.pooler
        seconds = self.newer_stamp - self.older_stamp
        avg = Totals.sum(self.newer.values()).average(Totals.sum(self.older.values()), seconds)
        clients = sum(1 for c in pooler.clients if c.state == ClientState.READY)
        waiting = sum(1 for c in pooler.clients if c.waiting)
        servers = sum(len(p.servers) for p in pooler.pools.values())
        log.info("stats", xacts_per_s=avg.xact_count, queries_per_s=avg.query_count,
                 client_logins_per_s=avg.client_login_count, in_bytes_per_s=avg.received,
                 out_bytes_per_s=avg.sent, xact_us=int(avg.xact_time * 1e6), query_us=int(avg.query_time * 1e6),
                 wait_us=int(avg.wait_time * 1e6), clients=clients, waiting=waiting, servers=servers)

    async def start(self) -> None:
        """Begin ticking (as a task of the pooler, stopped with it); listens on no port."""
        self.pooler.spawn(self.run())

    def close(self) -> None:
        pass  # the tick task is the pooler's: stop() cancels it

    async def run(self) -> None:
        """Tick forever; ``stats_period`` and ``log_stats`` are re-read each time (a reload changes them)."""
        self.restart()
        while True:
            period = self.pooler.config.settings.stats_period
            await asyncio.sleep(period if period > 0 else 60.0)
            if period <= 0:
                continue
            try:
                self.tick()
                if self.pooler.config.settings.log_stats:
                    self.log_line()
            except Exception:
                log.exception("stats tick failed")
