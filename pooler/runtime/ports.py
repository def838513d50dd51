"""Which of the pooler's ports cannot be bound, and why, in one line naming the setting that picks it.

Why a module of its own: when a listener fails at start, the ``OSError`` says "address already in use"
but not which of the pooler's ports (pooled, direct, metrics, HTTP) it was, nor what the user should
change. Asking the sockets again, one port at a time, answers both without threading names through
every listener. Plain blocking sockets: this runs before the pooler starts, or after it gave up.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = ["PORT_SETTINGS", "PortProblem", "env_var", "find_port_problem", "free_port", "probe", "probe_hosts"]

#: The pooler's TCP ports, in the order they are opened: (what it serves, the setting that picks it).
PORT_SETTINGS: tuple[tuple[str, str], ...] = (
    ("pooled endpoint", "listen_port"),
    ("direct endpoint", "direct_port"),
    ("metrics", "metrics_port"),
    ("HTTP", "http_port"),
)


def env_var(setting: str) -> str:
    """The environment variable that overrides a setting (``listen_port`` → ``POOLER_LISTEN_PORT``)."""
    return "POOLER_" + setting.upper()


def probe_hosts(listen_addr: str) -> list[str]:
    """The addresses a ``listen_addr`` value binds (``*`` is every IPv4 and IPv6 address)."""
    if listen_addr.strip() == "*":
        return ["0.0.0.0", "::"]
    return [h.strip() for h in listen_addr.split(",") if h.strip()] or ["127.0.0.1"]


def probe(host: str, port: int) -> OSError | None:
    """Try to bind ``host:port`` as the pooler would (SO_REUSEADDR); the error if that fails, else None."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        return OSError(errno.EADDRNOTAVAIL, f"cannot resolve {host!r}: {exc.strerror}")
    for family, kind, proto, _, address in infos[:1]:
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(1)
        except OSError as exc:
            return exc
        finally:
            sock.close()
    return None


def free_port(host: str) -> int:
    """A port free right now on ``host`` (racy by nature: whoever binds it next wins)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True, slots=True)
class PortProblem:
    """A port of ours that cannot be bound: what it serves, its setting, where, and the error."""

    what: str
    setting: str
    host: str
    port: int
    error: OSError

    def line(self, option: str | None = None) -> str:
        """One line naming the cause and the fix: the setting, its variable, and (under `up`) the option."""
        knobs = f"{option} or {env_var(self.setting)}" if option else f"{self.setting} ({env_var(self.setting)})"
        where = f"{self.host}:{self.port}" if ":" not in self.host else f"[{self.host}]:{self.port}"
        code = self.error.errno
        if code == errno.EADDRINUSE:
            return (f"{self.setting} {self.port}: {where} is already in use (another pooler, PgBouncer or Postgres?); "
                    f"stop it, or pick a free port with {knobs}")
        if code in (errno.EACCES, errno.EPERM):
            return (f"{self.setting} {self.port}: not allowed to listen on {where} (ports below 1024 need privileges); "
                    f"pick a port above 1024 with {knobs}")
        if code == errno.EADDRNOTAVAIL:
            return (f"listen_addr {self.host}: not an address of this machine ({self.error.strerror or self.error}); "
                    f"fix listen_addr ({env_var('listen_addr')})")
        return f"{self.setting} {self.port}: cannot listen on {where}: {self.error.strerror or self.error}"


def find_port_problem(listen_addr: str, ports: Mapping[str, int],
                      order: Sequence[tuple[str, str]] = PORT_SETTINGS) -> PortProblem | None:
    """The first of ``ports`` (setting name → port; 0 = off) that cannot be bound on ``listen_addr``."""
    for what, setting in order:
        port = ports.get(setting, 0)
        if not port:
            continue
        for host in probe_hosts(listen_addr):
            error = probe(host, port)
            if error is not None:
                return PortProblem(what, setting, host, port, error)
    return None
