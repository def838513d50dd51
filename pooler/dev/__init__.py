"""Development tools: the embedded Postgres behind ``pooler up``, and ``pooler check``."""
