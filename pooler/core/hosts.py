"""``host`` lists (``host=a,b``) and ``load_balance_hosts``: which Postgres host a new server connection goes to.

As PgBouncer (src/objects.c dns_connect): with ``round-robin`` (the default) each new connection takes the
next host of the list; with ``disable`` connections keep going to the same host until a connection to it
fails, and then move on to the next one. Either way, a host that refuses is left for the next attempt,
which ``server_login_retry`` paces (PgBouncer recommends lowering it when a list is used). Sans-IO: the
pool asks which host, and says when a connect failed.
"""

from __future__ import annotations

ROUND_ROBIN = "round-robin"
DISABLE = "disable"


def host_list(host: str | None) -> list[str | None]:
    """The hosts of a [databases] ``host`` value; ``[None]`` for none (the default Unix socket)."""
    if not host:
        return [None]
    hosts = [h.strip() for h in host.split(",") if h.strip()]
    return list(hosts) if hosts else [None]


class HostChooser:
    """Per pool: the position in its host list (PgBouncer's rrcounter)."""

    __slots__ = ("counter",)

    def __init__(self) -> None:
        self.counter = 0

    def choose(self, host: str | None, mode: str, *, last_connect_failed: bool) -> str | None:
        hosts = host_list(host)
        if len(hosts) == 1:
            return hosts[0]
        if mode == DISABLE and last_connect_failed:
            self.counter += 1  # stay on a host until it fails, then take the next
        chosen = hosts[self.counter % len(hosts)]
        if mode == ROUND_ROBIN:
            self.counter += 1
        return chosen
