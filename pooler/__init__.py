"""pooler: a Postgres connection pooler with PgBouncer semantics, for local development."""

from pooler._compiled import install_switch

__version__ = "0.1.0"

install_switch()
