"""``max_db_client_connections`` and ``max_user_client_connections``: client caps per database and per user.

Why: ``max_client_conn`` bounds the whole pooler; these keep one database or one user from taking every
client slot (PgBouncer 1.24). As PgBouncer (src/client.c check_db_connection_count), a client counts from
its startup packet, against the database name it asked for and the user name it gave, until it leaves;
the one over the cap is refused with PgBouncer's words. Only clients admitted while a cap is configured
are counted, so a pooler without caps keeps no per-client entry.
"""

from __future__ import annotations

import collections
from typing import TYPE_CHECKING

from pooler import config as cfg

if TYPE_CHECKING:
    from pooler.config import Config, DatabaseConfig
    from pooler.net.client import ClientConnection

DB_LIMIT_TEXT = "client connections exceeded (max_db_client_connections)"
USER_LIMIT_TEXT = "client connections exceeded (max_user_client_connections)"


class ClientLimits:
    __slots__ = ("_checked", "by_db", "by_user", "counted")

    def __init__(self) -> None:
        self._checked: tuple[Config, bool] | None = None  # (config, any cap in it): one scan per config
        self.by_db: collections.Counter[str] = collections.Counter()
        self.by_user: collections.Counter[str] = collections.Counter()
        self.counted: dict[ClientConnection, tuple[str, str]] = {}

    @staticmethod
    def any_configured(config: Config) -> bool:
        s = config.settings
        return bool(s.max_db_client_connections or s.max_user_client_connections
                    or any(d.max_db_client_connections for d in config.databases.values())
                    or any(u.max_user_client_connections for u in config.users.values()))

    def admit(self, config: Config, client: ClientConnection, db: DatabaseConfig) -> str | None:
        """Count the client in; the refusal text when that puts its database or user over the cap."""
        checked = self._checked
        if checked is None or checked[0] is not config:
            checked = self._checked = (config, self.any_configured(config))
        if client in self.counted or not checked[1]:
            return None
        key = (db.name, client.user)
        self.counted[client] = key
        self.by_db[key[0]] += 1
        self.by_user[key[1]] += 1
        max_db = cfg.effective_max_db_client_connections(config, db)
        if max_db and self.by_db[key[0]] > max_db:
            return DB_LIMIT_TEXT
        max_user = cfg.effective_max_user_client_connections(config, client.user)
        if max_user and self.by_user[key[1]] > max_user:
            return USER_LIMIT_TEXT
        return None

    def release(self, client: ClientConnection) -> None:
        key = self.counted.pop(client, None)
        if key is None:
            return
        for counter, name in ((self.by_db, key[0]), (self.by_user, key[1])):
            counter[name] -= 1
            if counter[name] <= 0:
                del counter[name]
