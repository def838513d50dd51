"""Structured logging: JSON lines for machines, readable lines for people.

Why structlog: every event carries the same keys (client id, remote address, database, user), so a
log line can be filtered and joined with metrics without regexes.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

log: Any = structlog.get_logger("pooler")


def configure(log_format: str = "auto", verbose: int = 0) -> None:
    """Pick JSON when stdout is not a terminal (or when asked), coloured console lines otherwise."""
    use_json = log_format == "json" or (log_format == "auto" and not sys.stderr.isatty())
    renderer: Any = structlog.processors.JSONRenderer() if use_json else structlog.dev.ConsoleRenderer()
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG if verbose else logging.INFO),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
