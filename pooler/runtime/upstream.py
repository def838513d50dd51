"""Connections the pooler opens to Postgres: server logins and CancelRequests.

Why apart from the pool: deciding *that* a server should open is the pool's (``pooler.core.pool``, no
I/O); opening a socket, with its timeout and its address forms (TCP host or Unix socket directory),
is this module's. A connect that fails becomes the server's login error, which the pool then handles
like any other failed login.
"""

from __future__ import annotations

import asyncio
import ssl

from pooler.config import DatabaseConfig
from pooler.core.pool import ServerState
from pooler.log import log
from pooler.net.server import ServerConnection
from pooler.net.tls import TlsRefusedError, connect_server
from pooler.runtime.tls import ServerTls
from pooler.wire import messages as pq

_TLS_HINT = ("check server_tls_sslmode and server_tls_ca_file (verify-full also checks the host name in "
             "[databases] against the certificate), and that Postgres has ssl = on")


def socket_path(directory: str, port: int) -> str:
    """Postgres's (and the pooler's) Unix socket for ``port`` in ``directory``."""
    return f"{directory}/.s.PGSQL.{port}"


def _tcp_host(db: DatabaseConfig) -> str | None:
    """The host to reach over TCP, or None for a Unix socket directory (or the default one)."""
    return db.host if db.host and not db.host.startswith("/") else None


async def connect(server: ServerConnection, db: DatabaseConfig, timeout: float, tls: ServerTls | None = None) -> None:
    """Open ``server``'s socket, with TLS as ``tls`` (server_tls_sslmode) says over TCP; on failure record
    why as its login error and close it."""
    loop = asyncio.get_running_loop()
    where = f"{db.host or 'local socket'}:{db.port}"
    try:
        async with asyncio.timeout(timeout or None):
            host = _tcp_host(db)
            if host is not None:
                await connect_server(server, host, db.port, tls)
            else:
                await loop.create_unix_connection(lambda: server, socket_path(db.host or "/tmp", db.port))
    except (OSError, TimeoutError) as exc:
        reason = "timed out (server_connect_timeout)" if isinstance(exc, TimeoutError) else (
            exc.strerror or str(exc) or type(exc).__name__)
        server.login_error = {
            "C": "08006",
            "M": f"could not connect to server {where}: {reason}",
            "H": _TLS_HINT if isinstance(exc, ssl.SSLError | TlsRefusedError) else
            "is Postgres running and accepting connections there? check host/port in [databases]",
        }
        server.close(server.login_error["M"])
        return
    if server.state == ServerState.CLOSED and server.transport is not None:
        server.transport.close()  # closed (timeout, shutdown) while the connect was in flight


async def send_cancel(db: DatabaseConfig, key: tuple[int, int], timeout: float) -> None:
    """A CancelRequest for the backend with ``key``, on a connection of its own; returns once Postgres has
    closed that connection, which it does after signalling the backend, so the cancel can no longer land
    on a later query (or after ``timeout``: ``cancel_wait_timeout``)."""
    try:
        async with asyncio.timeout(timeout or None):
            host = _tcp_host(db)
            if host is not None:
                reader, writer = await asyncio.open_connection(host, db.port)
            else:
                reader, writer = await asyncio.open_unix_connection(socket_path(db.host or "/tmp", db.port))
            try:
                writer.write(pq.cancel_request(*key))
                await writer.drain()
                await reader.read()  # Postgres answers nothing and hangs up when it is done
            finally:
                writer.close()
    except (OSError, TimeoutError) as exc:
        log.warning("cancel request failed", error=str(exc))
