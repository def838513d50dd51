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
from pooler.core.hosts import host_list
from pooler.core.pool import CONNECT_FAILED, CONNECT_TIMEOUT, ServerState
from pooler.log import log
from pooler.net.duck import as_protocol
from pooler.net.server import ServerConnection
from pooler.net.stream import open_connection
from pooler.net.tls import ServerTls, TlsRefusedError, connect_server
from pooler.wire import messages as pq

_TLS_HINT = ("check server_tls_sslmode and server_tls_ca_file (verify-full also checks the host name in "
             "[databases] against the certificate), and that Postgres has ssl = on")


def socket_path(directory: str, port: int) -> str:
    """Postgres's (and the pooler's) Unix socket for ``port`` in ``directory``."""
    return f"{directory}/.s.PGSQL.{port}"


def _tcp_host(host: str | None) -> str | None:
    """The host to reach over TCP, or None for a Unix socket directory (or the default one)."""
    return host if host and not host.startswith("/") else None


async def connect(server: ServerConnection, db: DatabaseConfig, host: str | None, timeout: float,
                  tls: ServerTls | None = None) -> None:
    """Open ``server``'s socket to ``host`` (one of db's hosts, chosen by the pool), with TLS as ``tls``
    (server_tls_sslmode) says over TCP; on failure record why as its login error, in PgBouncer's words with
    ours in DETAIL, and close it."""
    loop = asyncio.get_running_loop()
    where = f"{host or 'local socket'}:{db.port}"
    try:
        async with asyncio.timeout(timeout or None):
            tcp = _tcp_host(host)
            if tcp is not None:
                await connect_server(server, tcp, db.port, tls)
            else:
                await open_connection(loop, as_protocol(server), None, db.port, socket_path(host or "/tmp", db.port))
    except (OSError, TimeoutError) as exc:
        timed_out = isinstance(exc, TimeoutError)
        reason = "timed out (server_connect_timeout)" if timed_out else (
            exc.strerror or str(exc) or type(exc).__name__)
        server.login_error = {
            "C": "08006",
            "M": CONNECT_TIMEOUT if timed_out else CONNECT_FAILED,
            "D": f"could not connect to server {where}: {reason}",
            "H": _TLS_HINT if isinstance(exc, ssl.SSLError | TlsRefusedError) else
            "is Postgres running and accepting connections there? check host/port in [databases]",
        }
        server.close(server.login_error["D"])
        return
    if server.state == ServerState.CLOSED and server.transport is not None:
        server.transport.close()  # closed (timeout, shutdown) while the connect was in flight


def server_host(server: ServerConnection, db: DatabaseConfig) -> str | None:
    """The host ``server`` is connected to: with a host list (host=a,b) the entry alone does not say."""
    peer = server.transport.get_extra_info("peername") if server.transport is not None else None
    return str(peer[0]) if isinstance(peer, tuple) else host_list(db.host)[0]


async def send_cancel(host: str | None, port: int, key: tuple[int, int], timeout: float) -> None:
    """A CancelRequest for the backend with ``key``, on a connection of its own, to its host; returns once
    Postgres has closed that connection, which it does after signalling the backend, so the cancel can no
    longer land on a later query (or after ``timeout``: ``cancel_wait_timeout``)."""
    try:
        async with asyncio.timeout(timeout or None):
            tcp = _tcp_host(host)
            if tcp is not None:
                reader, writer = await asyncio.open_connection(tcp, port)
            else:
                reader, writer = await asyncio.open_unix_connection(socket_path(host or "/tmp", port))
            try:
                writer.write(pq.cancel_request(*key))
                await writer.drain()
                await reader.read()  # Postgres answers nothing and hangs up when it is done
            finally:
                writer.close()
    except (OSError, TimeoutError) as exc:
        log.warning("cancel request failed", error=str(exc))
