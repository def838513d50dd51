"""Several pooler processes on one port: ``workers = N``.

Why processes: one Python process forwards on one core. With ``workers = N`` the parent forks N
workers; each binds the same listen ports with SO_REUSEPORT (the kernel spreads new connections
across them) and runs an independent pooler with a share of every pool size and cap, so the totals
across workers stay as configured (each share is at least 1, so a total smaller than N is exceeded
up to N).

What crosses workers is cancel: a CancelRequest arrives on a fresh connection, which the kernel may
hand to any worker. Each client's cancel key carries its worker's index in its low bits, and each
worker listens on a unix socket in a private directory; a worker that receives a cancel for another
relays the 16 bytes there, and that worker routes it like any cancel of its own.

Scaling beyond one host means several pooler replicas behind the platform's TCP load balancer (a
Kubernetes Service, say), each configured with its share of Postgres's ``max_connections``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from pooler.config import Config

#: Low bits of a cancel key's first half that name the worker; so at most 16 workers.
WORKER_BITS = 4
MAX_WORKERS = 1 << WORKER_BITS

#: Signals the parent passes on to every worker (PgBouncer's set: stop modes, reload, pause/resume).
FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)


@dataclasses.dataclass(frozen=True, slots=True)
class Worker:
    """Which worker this process is, and where the workers listen for relayed cancels."""

    index: int = 0
    count: int = 1
    cancel_dir: str = ""

    def cancel_socket(self, index: int) -> str:
        return str(Path(self.cancel_dir) / f"cancel-{index}.sock")

    def owner_of(self, key: tuple[int, int]) -> int:
        return key[0] & (MAX_WORKERS - 1)


SINGLE = Worker()


def share(total: int, index: int, count: int) -> int:
    """This worker's part of ``total`` (0, meaning "no limit", stays 0)."""
    if total <= 0 or count == 1:
        return total
    return max(1, total // count + (1 if index < total % count else 0))


def _share_optional(total: int | None, index: int, count: int) -> int | None:
    return None if total is None else share(total, index, count)


def worker_config(config: Config, index: int, count: int) -> Config:
    """The config of worker ``index`` of ``count``: every pool size and cap divided between the workers."""
    s = config.settings
    settings = dataclasses.replace(
        s,
        default_pool_size=share(s.default_pool_size, index, count),
        min_pool_size=share(s.min_pool_size, index, count),
        reserve_pool_size=share(s.reserve_pool_size, index, count),
        max_client_conn=share(s.max_client_conn, index, count),
        max_db_connections=share(s.max_db_connections, index, count),
        max_user_connections=share(s.max_user_connections, index, count),
        metrics_port=s.metrics_port + index if s.metrics_port else 0,
        unix_socket_dir=s.unix_socket_dir if index == 0 else "",
        so_reuseport=True,
    )
    databases = {
        name: dataclasses.replace(
            db,
            pool_size=_share_optional(db.pool_size, index, count),
            min_pool_size=_share_optional(db.min_pool_size, index, count),
            reserve_pool_size=_share_optional(db.reserve_pool_size, index, count),
            max_db_connections=_share_optional(db.max_db_connections, index, count),
        )
        for name, db in config.databases.items()
    }
    users = {
        name: dataclasses.replace(
            user,
            pool_size=_share_optional(user.pool_size, index, count),
            reserve_pool_size=_share_optional(user.reserve_pool_size, index, count),
            max_user_connections=_share_optional(user.max_user_connections, index, count),
        )
        for name, user in config.users.items()
    }
    return dataclasses.replace(config, settings=settings, databases=databases, users=users)


def run_workers(config: Config, serve_one: Callable[[Config, Worker], int]) -> int:
    """Fork ``config.settings.workers`` workers, pass signals on to them, and wait for all to exit."""
    count = config.settings.workers
    cancel_dir = tempfile.mkdtemp(prefix="pooler-workers-")
    pids: list[int] = []
    try:
        for index in range(count):
            pid = os.fork()
            if pid == 0:  # the worker
                # Its own process group: a terminal's Ctrl-C reaches only the parent, which passes it on
                # once (a worker seeing SIGINT twice would take it as "shut down immediately").
                os.setpgid(0, 0)
                for sig in FORWARDED_SIGNALS:
                    signal.signal(sig, signal.SIG_DFL)
                code = 1
                try:
                    code = serve_one(worker_config(config, index, count), Worker(index, count, cancel_dir))
                finally:
                    sys.stdout.flush()
                    sys.stderr.flush()
                    os._exit(code)
            pids.append(pid)

        def forward(sig: int, _frame: object) -> None:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)

        for sig in FORWARDED_SIGNALS:
            signal.signal(sig, forward)
        code = 0
        for pid in pids:
            _, status = os.waitpid(pid, 0)
            code = code or os.waitstatus_to_exitcode(status)
        return code
    finally:
        shutil.rmtree(cancel_dir, ignore_errors=True)
