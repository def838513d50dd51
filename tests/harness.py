"""A real pooler for tests: its own uvloop event loop on a thread, configured against the test Postgres.

Why a thread and not a subprocess: tests start dozens of poolers with different settings, and a
thread starts in milliseconds and lets a test look at the pooler's own state (``call``) — while the
clients under test (psycopg, asyncpg, psql, pgbench) still talk to it over real TCP sockets.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar
from urllib.parse import quote, urlencode

import uvloop
from support import APP_DB, APP_PASSWORD, APP_USER, MD5_PASSWORD, MD5_USER, OTHER_DB, PostgresServer

from pooler.cli import assemble
from pooler.config import Config, DatabaseConfig, Settings, UserConfig, UserlistEntry
from pooler.runtime.process import Pooler
from pooler.wire.auth import AuthType

T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make_config(
    postgres: PostgresServer,
    *,
    databases: dict[str, DatabaseConfig] | None = None,
    users: dict[str, UserConfig] | None = None,
    userlist: tuple[UserlistEntry, ...] | None = None,
    **settings: Any,
) -> Config:
    """A config for ``postgres``: databases appdb, otherdb and a ``*`` fallback; SCRAM auth by default."""
    if databases is None:
        databases = {
            APP_DB: DatabaseConfig(name=APP_DB, host=postgres.host, port=postgres.port),
            OTHER_DB: DatabaseConfig(name=OTHER_DB, host=postgres.host, port=postgres.port),
            "*": DatabaseConfig(name="*", host=postgres.host, port=postgres.port),
        }
    if userlist is None:
        userlist = (UserlistEntry(APP_USER, APP_PASSWORD), UserlistEntry(MD5_USER, MD5_PASSWORD))
    base: dict[str, Any] = {
        "listen_port": 0,
        "direct_port": free_port(),
        "auth_type": AuthType.SCRAM_SHA_256,
        "log_connections": False,
        "log_disconnections": False,
        "metrics_port": 0,  # the default 9127 would collide between poolers; metrics tests pass a free port
    }
    base.update(settings)
    return Config(
        settings=dataclasses.replace(Settings(), **base),
        databases=databases,
        users=users or {},
        extra_userlist=userlist,
        source="tests",
    )


class RunningPooler:
    """A started pooler; ``dsn()`` builds client URLs, ``call()`` runs code on its loop."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.loop = uvloop.new_event_loop()
        self.pooler: Pooler | None = None
        self.port = 0
        self.direct_port = 0
        self._thread = threading.Thread(target=self.loop.run_forever, name="pooler", daemon=True)

    def start(self) -> None:
        self._thread.start()
        self.pooler = self.run(self._start())
        self.port = self.pooler.ports["pooled"]
        self.direct_port = self.pooler.ports.get("direct", 0)

    async def _start(self) -> Pooler:
        pooler = assemble(self.config)
        await pooler.start()
        return pooler

    def run(self, coro: Any, timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def call(self, fn: Callable[[Pooler], T], timeout: float = 10) -> T:
        """Run ``fn(pooler)`` on the pooler's loop (its state is only safe to read there)."""
        future: concurrent.futures.Future[T] = concurrent.futures.Future()

        def invoke() -> None:
            try:
                assert self.pooler is not None
                future.set_result(fn(self.pooler))
            except BaseException as exc:
                future.set_exception(exc)

        self.loop.call_soon_threadsafe(invoke)
        return future.result(timeout)

    def reload(self, config: Config) -> None:
        self.config = config
        self.call(lambda p: p.reload(config))

    def stop(self) -> None:
        if self.pooler is not None:
            self.run(self.pooler.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()

    def dsn(
        self,
        dbname: str = APP_DB,
        user: str = APP_USER,
        password: str | None = APP_PASSWORD,
        *,
        direct: bool = False,
        **params: str,
    ) -> str:
        auth = quote(user, safe="")
        if password is not None:
            auth += ":" + quote(password, safe="")
        port = self.direct_port if direct else self.port
        url = f"postgresql://{auth}@127.0.0.1:{port}/{quote(dbname, safe='')}"
        return f"{url}?{urlencode(params)}" if params else url

    def pool_stat(self, dbname: str = APP_DB, user: str = APP_USER) -> dict[str, int]:
        """Counts of one pool, read on the pooler's loop."""

        def read(pooler: Pooler) -> dict[str, int]:
            pool = pooler.pools.get((dbname, user))
            if pool is None:
                return {"servers": 0, "idle": 0, "waiting": 0, "active": 0}
            return {
                "servers": len(pool.servers),
                "idle": len(pool.idle),
                "waiting": len(pool.waiting),
                "active": sum(1 for s in pool.servers if s.client is not None),
            }

        return self.call(read)


@contextmanager
def running_pooler(config: Config) -> Iterator[RunningPooler]:
    pooler = RunningPooler(config)
    pooler.start()
    try:
        yield pooler
    finally:
        pooler.stop()
