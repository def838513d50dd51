"""What the pooler knows about a client's end of the connection: its address as PgBouncer prints it, and,
over a Unix socket, the OS user on the other side.

Why here: ``application_name_add_host`` and the admin console's peer login both need it, and neither
belongs in the data path's shell.
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct

#: The admin console's own user: over the Unix socket, from the pooler's OS user, it needs no password.
ADMIN_PEER_USER = "pgbouncer"
_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid (Linux SO_PEERCRED)


def address_details(peer: object) -> str:
    """``ip:port``, ``[ipv6]:port`` or ``unix``: the suffix PgBouncer's application_name_add_host appends."""
    if isinstance(peer, tuple) and len(peer) >= 2:
        host, port = peer[0], peer[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return "unix"


def with_host(application_name: str | None, peer: object) -> str:
    """PgBouncer's ``application_name_add_host``: ``<name or 'app'> - <address>``."""
    return f"{application_name or 'app'} - {address_details(peer)}"


def peer_uid(transport: asyncio.BaseTransport | None) -> int | None:
    """The OS user id of a Unix-socket peer (SO_PEERCRED, or getpeereid's equivalent); None over TCP."""
    if transport is None:
        return None
    sock = transport.get_extra_info("socket")
    if sock is None or sock.family != socket.AF_UNIX:
        return None
    try:
        if hasattr(socket, "SO_PEERCRED"):
            _, uid, _ = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
            return int(uid)
        if hasattr(socket, "LOCAL_PEERCRED"):  # macOS / BSD: struct xucred, uid after the version field
            data = sock.getsockopt(0, socket.LOCAL_PEERCRED, 76)
            return int(struct.unpack_from("=Ii", data)[1])
    except OSError:
        return None
    return None


def is_own_user(transport: asyncio.BaseTransport | None) -> bool:
    """The peer runs as the pooler's own OS user (PgBouncer lets it into the console as ``pgbouncer``)."""
    uid = peer_uid(transport)
    return uid is not None and uid == os.geteuid()
