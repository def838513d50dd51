"""Structured logging: JSON lines for machines, readable coloured lines for people.

Why structlog: every event carries the same keys (``event``, ``client`` id, ``remote`` address,
``database``, ``user``), so a log line can be filtered and joined with metrics without regexes.

Format: JSON lines when stdout or the log stream (stderr) is not a terminal — a container, a pipe, a
file — or when ``log_format = json``; coloured console lines on a terminal (``log_format = console``
forces them). ``logfile`` additionally appends every event to a file, always as JSON lines. ``verbose``
turns debug events on.

Loggers are not cached on first use, so ``configure`` (at start, and again when a reload changes the
log settings) takes effect everywhere at once; logging is never on the per-transaction path, so the
lookup this costs per log call does not matter.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping, MutableMapping
from typing import IO, TYPE_CHECKING, Any

import structlog

if TYPE_CHECKING:
    from pooler.config import Settings

log: Any = structlog.get_logger("pooler")


class _Sink:
    """structlog's final "logger": renders each event for the stream and, as JSON, for the log file."""

    def __init__(self) -> None:
        self.stream: IO[str] = sys.stderr
        self.use_json = True
        self.file: IO[str] | None = None
        self._json = structlog.processors.JSONRenderer()
        self._console = structlog.dev.ConsoleRenderer(colors=True)
        self._exc = structlog.processors.format_exc_info

    def emit(self, method: str, event: dict[str, Any]) -> None:
        line = ""
        if self.use_json or self.file is not None:
            line = str(self._json(None, method, self._exc(None, method, dict(event))))
        if self.use_json:
            self._write(self.stream, line)
        else:
            self._write(self.stream, str(self._console(None, method, dict(event))))
        if self.file is not None:
            self._write(self.file, line)

    @staticmethod
    def _write(stream: IO[str], text: str) -> None:
        try:
            stream.write(text + "\n")
            stream.flush()
        except (OSError, ValueError):
            pass  # a closed or full log destination must not take the pooler down

    def msg(self, **event: Any) -> None:
        self.emit("info", event)

    def debug(self, **event: Any) -> None:
        self.emit("debug", event)

    def info(self, **event: Any) -> None:
        self.emit("info", event)

    def warning(self, **event: Any) -> None:
        self.emit("warning", event)

    def error(self, **event: Any) -> None:
        self.emit("error", event)

    def critical(self, **event: Any) -> None:
        self.emit("critical", event)

    def exception(self, **event: Any) -> None:
        self.emit("error", event)

    warn = warning
    fatal = critical
    log = msg


_sink = _Sink()


def _hand_to_sink(logger: Any, method: str, event: MutableMapping[str, Any]) -> Mapping[str, Any]:
    """Last processor: pass the event dict on as keyword arguments (the sink renders it)."""
    return event


def use_json(log_format: str, stream: IO[str] | None = None) -> bool:
    """The format rule: json/console as asked; ``auto`` is JSON unless both stdout and the log stream are TTYs."""
    if log_format == "json":
        return True
    if log_format == "console":
        return False
    stream = stream or sys.stderr
    return not (sys.stdout.isatty() and stream.isatty())


def configure(log_format: str = "auto", verbose: int = 0, logfile: str = "") -> None:
    """Set the format, level and optional log file for every logger of the process."""
    _sink.stream = sys.stderr
    _sink.use_json = use_json(log_format, sys.stderr)
    _sink._console = structlog.dev.ConsoleRenderer(colors=not _sink.use_json and sys.stderr.isatty())
    old = _sink.file
    _sink.file = None
    if old is not None:
        old.close()
    if logfile:
        try:
            _sink.file = open(logfile, "a", encoding="utf-8")  # noqa: SIM115 - kept open for the process's life
        except OSError as exc:
            print(f"pooler: cannot open logfile {logfile}: {exc.strerror or exc}", file=sys.stderr)
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _hand_to_sink,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG if verbose else logging.INFO),
        logger_factory=lambda *args: _sink,
        cache_logger_on_first_use=False,
    )


def configure_from_settings(settings: Settings) -> None:
    configure(settings.log_format, settings.verbose, settings.logfile)
