"""TCP socket options from the config (``tcp_keepalive``, ``tcp_keepidle``, ``tcp_keepintvl``, ``tcp_keepcnt``,
``tcp_user_timeout``), on every client and server connection as PgBouncer's tune_socket does.

On Linux an accepted connection starts with a copy of its listening socket's options, so client
connections get them from the listeners (set at start and again on RELOAD): no setsockopt per accepted
client, and no socket object per idle client (uvloop keeps the one ``get_extra_info("socket")`` makes).

Why: keepalive is how a pooler learns that a peer vanished without a FIN (a laptop closed, a NAT that
forgot the flow); without it a dead client's server stays linked until a timeout fires. 0 leaves the OS
default. Unix sockets have no such options and are left alone; a platform without one of them (macOS has
no TCP_USER_TIMEOUT) skips it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import socket
import sys

from pooler.config import Settings

_TCP_FAMILIES = (socket.AF_INET, socket.AF_INET6)


#: Connections accepted on a listening socket start with its TCP options (Linux copies the whole socket).
INHERITED_BY_ACCEPTED = sys.platform.startswith("linux")


def apply_tcp_options(transport: asyncio.BaseTransport, settings: Settings) -> None:
    """Tune one connection's socket (servers; clients where accepted sockets do not inherit the options)."""
    tune_socket(transport.get_extra_info("socket"), settings)


def tune_socket(sock: socket.socket | None, settings: Settings) -> None:
    """Set the config's TCP options on ``sock``, a connection or a listening socket; not TCP: nothing to do.

    A 0 means the OS default, and is set as such: a listener tuned before (then RELOADed to 0) would
    otherwise pass its old value on to every connection it accepts.
    """
    if sock is None or sock.family not in _TCP_FAMILIES:
        return
    options: list[tuple[int, int, int]] = [(socket.SOL_SOCKET, socket.SO_KEEPALIVE, int(settings.tcp_keepalive))]
    defaults = _os_defaults()
    if settings.tcp_keepalive:
        for name, value in (("TCP_KEEPIDLE", settings.tcp_keepidle), ("TCP_KEEPINTVL", settings.tcp_keepintvl),
                            ("TCP_KEEPCNT", settings.tcp_keepcnt)):
            if name in defaults:
                options.append((socket.IPPROTO_TCP, getattr(socket, name), value or defaults[name]))
    if "TCP_USER_TIMEOUT" in defaults:
        options.append((socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT,
                        settings.tcp_user_timeout or defaults["TCP_USER_TIMEOUT"]))
    for level, option, value in options:
        with contextlib.suppress(OSError):  # a socket already reset by the peer: nothing to tune
            sock.setsockopt(level, option, value)


@functools.cache
def _os_defaults() -> dict[str, int]:
    """What a fresh TCP socket has for the options this platform offers (what a setting of 0 stands for)."""
    defaults: dict[str, int] = {}
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as fresh:
        for name in ("TCP_KEEPIDLE", "TCP_KEEPINTVL", "TCP_KEEPCNT", "TCP_USER_TIMEOUT"):
            if hasattr(socket, name):
                with contextlib.suppress(OSError):
                    defaults[name] = fresh.getsockopt(socket.IPPROTO_TCP, getattr(socket, name))
    return defaults
