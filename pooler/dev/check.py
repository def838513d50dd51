"""``pooler check``: is the pooler serving? For compose healthchecks and scripts; exit 0 or 1 with one line.

Two ways, picked from the same config/environment ``pooler run`` reads:

* ``metrics_port`` set (the default, 9127): GET ``/readyz``, which answers 200 only when the pooler is
  accepting clients and reaches Postgres;
* otherwise, or with ``--login``: a real login through the pooled port and ``SELECT 1``, as the user
  of ``--url`` or of ``DATABASE_URL`` (the credentials clients use with the pooler).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from urllib.parse import quote, unquote, urlsplit

from pooler.config import Config, ConfigError

DEFAULT_TIMEOUT = 5.0


def _local_host(listen_addr: str) -> str:
    """Where to reach a listener bound to ``listen_addr`` from the same machine."""
    first = listen_addr.split(",", maxsplit=1)[0].strip()
    if first in ("", "*", "0.0.0.0"):
        return "127.0.0.1"
    if first == "::":
        return "::1"
    return first


async def _http_get(host: str, port: int, path: str, timeout: float) -> tuple[int, str]:
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n".encode())
            await writer.drain()
            raw = await reader.read()
        finally:
            writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0].decode("latin-1")
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or not parts[1].isdigit():
        raise OSError(f"not an HTTP answer: {status_line!r}")
    return int(parts[1]), body.decode("utf-8", "replace").strip()


async def check_ready(config: Config, timeout: float = DEFAULT_TIMEOUT) -> tuple[bool, str]:
    s = config.settings
    host, port = _local_host(s.listen_addr), s.metrics_port
    try:
        status, body = await _http_get(host, port, "/readyz", timeout)
    except TimeoutError:
        return False, f"no answer from http://{host}:{port}/readyz within {timeout:g}s"
    except OSError as exc:
        return False, f"cannot reach http://{host}:{port}/readyz: {exc.strerror or exc}"
    return status == 200, body or f"HTTP {status}"


def login_url(config: Config, environ: Mapping[str, str], url: str | None) -> str | None:
    """The URL to log in through the pooled port: ``--url`` as given, else DATABASE_URL's user, password and
    database pointed at the pooler's own port."""
    if url:
        return url
    database_url = environ.get("DATABASE_URL", "").strip()
    if not database_url:
        return None
    parts = urlsplit(database_url)
    user, password = unquote(parts.username or ""), unquote(parts.password or "")
    dbname = unquote(parts.path.lstrip("/")) or user
    auth = quote(user, safe="") + (":" + quote(password, safe="") if password else "")
    host = _local_host(config.settings.listen_addr)
    host = f"[{host}]" if ":" in host else host
    return f"postgresql://{auth}@{host}:{config.settings.listen_port}/{quote(dbname, safe='')}"


async def check_login(url: str, timeout: float = DEFAULT_TIMEOUT) -> tuple[bool, str]:
    import asyncpg

    try:
        conn = await asyncpg.connect(url, timeout=timeout, statement_cache_size=0)
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        return False, f"login through the pooler failed: {exc}"
    try:
        value = await asyncio.wait_for(conn.fetchval("SELECT 1"), timeout)
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        return False, f"SELECT 1 through the pooler failed: {exc}"
    finally:
        await conn.close(timeout=timeout)
    return value == 1, "ready: logged in and ran SELECT 1"


def run_check(config: Config, environ: Mapping[str, str], *, url: str | None = None, login: bool = False,
              timeout: float = DEFAULT_TIMEOUT) -> tuple[bool, str]:
    """(ok, one-line reason)."""
    if config.settings.metrics_port and not login and not url:
        return asyncio.run(check_ready(config, timeout))
    target = login_url(config, environ, url)
    if target is None:
        raise ConfigError("environment", "DATABASE_URL", "pooler check needs metrics_port, --url or DATABASE_URL "
                          "with a user and password to log in with")
    return asyncio.run(check_login(target, timeout))
