"""pooler: a Postgres connection pooler with PgBouncer semantics, for local development."""

__version__ = "0.1.0"
