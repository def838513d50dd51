"""`pooler up` as Neon's endpoint in miniature: TLS URLs that work as printed, Neon's limits, launch day.

Each test starts `pooler up` (an embedded Postgres and the pooler) as a user would, in a subprocess.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg
from harness import free_port
from test_cli import clean_env, pooler_cmd

NODE_DIR = Path(__file__).parents[1] / "node"


@dataclass
class Up:
    proc: subprocess.Popen[str]
    pooled: str
    direct: str
    ca_file: str
    port: int
    direct_port: int


@contextmanager
def pooler_up(data_dir: Path, *args: str) -> Iterator[Up]:
    port, direct = free_port(), free_port()
    log = data_dir.parent / "up.log"  # a file, not a pipe: 500 logins' log lines would fill a pipe nobody reads
    with log.open("w") as stderr:
        proc = subprocess.Popen(
            pooler_cmd("up", "--port", str(port), "--direct-port", str(direct), "--data-dir", str(data_dir), *args),
            env=clean_env(), stdout=subprocess.PIPE, stderr=stderr, text=True)
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline().strip() for _ in range(2)]  # a pipe gets just the two URLs
        if not lines[0].startswith("DATABASE_URL="):
            proc.kill()
            proc.wait()
            raise AssertionError(f"pooler up printed {lines}: {log.read_text()[-2000:]}")
        ca = str(data_dir / "tls" / "ca.crt")  # where the README (and the terminal banner) says it is
        yield Up(proc, lines[0].split("=", 1)[1], lines[1].split("=", 1)[1], ca, port, direct)
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_printed_urls_work_as_printed(tmp_path: Path) -> None:
    with pooler_up(tmp_path / "data") as up:
        for url in (up.pooled, up.direct):
            assert url.endswith("?sslmode=require&channel_binding=require")
        assert Path(up.ca_file).is_file() and Path(up.ca_file).parent == tmp_path / "data" / "tls"
        # libpq (psycopg's, which has OpenSSL): channel_binding=require means TLS and SCRAM-SHA-256-PLUS, or
        # no login; verify-full with the printed CA, as the printed hint says.
        verify_full = up.pooled.replace("sslmode=require", "sslmode=verify-full") + f"&sslrootcert={up.ca_file}"
        for url in (up.pooled, up.direct, verify_full):
            with psycopg.connect(url) as conn:
                assert conn.pgconn.ssl_in_use
                assert conn.execute("select current_user, 1").fetchone() == ("app", 1)
        with psycopg.connect(up.pooled) as conn:
            assert conn.execute("show max_connections").fetchone() == ("112",)  # Neon's 0.25 CU
        admin = up.pooled.replace("/app?", "/pgbouncer?")
        with psycopg.connect(admin, autocommit=True) as conn:
            config = {row[0]: row[1] for row in conn.execute("SHOW CONFIG").fetchall()}
        assert (config["max_client_conn"], config["default_pool_size"], config["max_prepared_statements"],
                config["pool_mode"], config["client_tls_sslmode"]) == ("10000", "100", "1000", "transaction", "prefer")
        assert float(config["query_wait_timeout"]) == 120
        # node-postgres and postgres.js with nothing but the URL (they verify certificates: the CA as printed
        # for Node.js).
        node = shutil.which("node")
        assert node is not None, "Node.js is required for the driver tests"
        env = {**os.environ, "NODE_EXTRA_CA_CERTS": up.ca_file}
        for url in (up.pooled, up.direct):
            result = subprocess.run([node, "url.mjs", url], cwd=NODE_DIR, env=env, capture_output=True, text=True,
                                    timeout=60, check=False)
            assert result.returncode == 0, result.stderr
            assert json.loads(result.stdout.strip().splitlines()[-1]) == {
                "pg": {"encrypted": True, "who": "app", "two": 2}, "postgres": {"who": "app", "two": 2}}
            # asyncpg takes sslmode from the URL and sends channel_binding as a setting, which `up` ignores.
            assert asyncio.run(_asyncpg_select(url)) == (True, 1)
        # TLS is offered, not forced.
        plain = up.pooled.split("?")[0] + "?sslmode=disable"
        with psycopg.connect(plain) as conn:
            assert not conn.pgconn.ssl_in_use


async def _asyncpg_select(url: str) -> tuple[bool, object]:
    """(TLS in use, select 1) through asyncpg with nothing but the URL."""
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        encrypted = conn._transport.get_extra_info("ssl_object") is not None  # type: ignore[attr-defined]
        return encrypted, await conn.fetchval("select 1")
    finally:
        await conn.close()


async def _connect_all(url: str, n: int) -> list[BaseException | None]:
    async def one() -> None:
        conn = await psycopg.AsyncConnection.connect(url)
        try:
            await conn.execute("select 1")
        finally:
            await conn.close()

    results = await asyncio.gather(*(one() for _ in range(n)), return_exceptions=True)
    return [r if isinstance(r, BaseException) else None for r in results]


def test_launch_day_pooled_serves_500_the_direct_url_refuses(tmp_path: Path) -> None:
    """500 fresh TLS + SCRAM-PLUS connections at once at compute size 0.25 (max_connections = 112)."""
    with pooler_up(tmp_path / "data", "--compute-size", "0.25", "--require-tls") as up:
        pooled = asyncio.run(_connect_all(up.pooled, 500))
        assert [e for e in pooled if e is not None] == []
        direct = [e for e in asyncio.run(_connect_all(up.direct, 500)) if e is not None]
        assert direct, "the direct endpoint took 500 backends on a 112-connection compute"
        refusals = ("too many clients already", "remaining connection slots are reserved")  # both 53300
        assert all(any(r in str(e) for r in refusals) for e in direct), {str(e) for e in direct}
        assert any("too many clients already" in str(e) for e in direct)
        # --require-tls refuses plaintext, as Neon does.
        try:
            psycopg.connect(up.pooled.split("?")[0] + "?sslmode=disable").close()
            raise AssertionError("a plaintext login was accepted with --require-tls")
        except psycopg.OperationalError as exc:
            assert "SSL required" in str(exc)


def test_compute_size_is_checked(tmp_path: Path) -> None:
    result = subprocess.run(pooler_cmd("up", "--compute-size", "0.3", "--data-dir", str(tmp_path)), env=clean_env(),
                            capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 2
    assert result.stderr.strip() == ("pooler up: --compute-size '0.3': expected one of 0.25, 0.5, 1, 2, 3, 4, 5, "
                                     "6, 7, 8 or a whole number of 9 or more")
