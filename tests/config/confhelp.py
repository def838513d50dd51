"""Helpers shared by config's tests: a config file written from text, and the one-line error a load gives."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from pooler.config import ConfigError, load_config


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


def ini(tmp_path: Path, pgbouncer: str = "", databases: str = "", users: str = "") -> str:
    """A pgbouncer.ini with the given section bodies."""
    return write(
        tmp_path,
        "pgbouncer.ini",
        f"[pgbouncer]\n{pgbouncer}\n[databases]\n{databases}\n[users]\n{users}\n",
    )


def error_of(path: str | None, environ: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, environ or {})
    message = str(info.value)
    assert "\n" not in message
    return message
