"""TCP socket options from the config (``tcp_keepalive``, ``tcp_keepidle``, ``tcp_keepintvl``, ``tcp_keepcnt``,
``tcp_user_timeout``), set on every client and server connection as PgBouncer's tune_socket does.

Why: keepalive is how a pooler learns that a peer vanished without a FIN (a laptop closed, a NAT that
forgot the flow); without it a dead client's server stays linked until a timeout fires. 0 leaves the OS
default. Unix sockets have no such options and are left alone; a platform without one of them (macOS has
no TCP_USER_TIMEOUT) skips it.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket

from pooler.config import Settings

_TCP_FAMILIES = (socket.AF_INET, socket.AF_INET6)


def apply_tcp_options(transport: asyncio.BaseTransport, settings: Settings) -> None:
    sock = transport.get_extra_info("socket")
    if sock is None or sock.family not in _TCP_FAMILIES:
        return
    options: list[tuple[int, int, int]] = [(socket.SOL_SOCKET, socket.SO_KEEPALIVE, int(settings.tcp_keepalive))]
    if settings.tcp_keepalive:
        for name, value in (("TCP_KEEPIDLE", settings.tcp_keepidle), ("TCP_KEEPINTVL", settings.tcp_keepintvl),
                            ("TCP_KEEPCNT", settings.tcp_keepcnt)):
            if value and hasattr(socket, name):
                options.append((socket.IPPROTO_TCP, getattr(socket, name), value))
    if settings.tcp_user_timeout and hasattr(socket, "TCP_USER_TIMEOUT"):
        options.append((socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, settings.tcp_user_timeout))
    for level, option, value in options:
        with contextlib.suppress(OSError):  # a socket already reset by the peer: nothing to tune
            sock.setsockopt(level, option, value)
